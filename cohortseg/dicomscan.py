"""A fast DICOM header scanner for the index: the top-level tags it needs, nothing else.

Why our own: indexing a PACS export means reading the header of every file, often 10^5-10^6
files. ``pydicom.dcmread(stop_before_pixels=True, specific_tags=...)`` still builds a Dataset,
decodes the file meta and resolves each element through its dictionary, about 3 ms a file here,
slower than a full ``dcmread`` whose element values stay unparsed. This scanner reads the first
kilobytes of a file into memory and walks the elements with ``struct``, decoding only the ~30
tags the index uses and skipping every other value (and whole sequences) by its length, and
stopping at the pixel data. It covers the common case: Part-10 files with a preamble, explicit or
implicit VR little endian, single-frame, default / Latin-1 / UTF-8 character sets. Anything else
(big endian, deflate, no preamble, multi-frame functional groups, other character sets, Siemens
mosaics without 0019,100A, a header longer than the buffer) returns None and the caller falls
back to pydicom, so the output is the same either way (tests check that on every shared file).
"""

from __future__ import annotations

import os
import struct
from typing import Any

# tag -> (keyword, VR used for implicit VR files and for decoding); the identifying ones (names, ids,
# accession, institution, dates) are read only to clean free-text descriptors (cohortseg.descriptors)
# and to key pseudonyms: they never leave the index's memory
TAGS: dict[int, tuple[str, str]] = {
    0x00080005: ("SpecificCharacterSet", "CS"),
    0x00080008: ("ImageType", "CS"),
    0x00080016: ("SOPClassUID", "UI"),
    0x00080018: ("SOPInstanceUID", "UI"),
    0x00080020: ("StudyDate", "DA"),
    0x00080021: ("SeriesDate", "DA"),
    0x00080030: ("StudyTime", "TM"),
    0x00080050: ("AccessionNumber", "SH"),
    0x00080060: ("Modality", "CS"),
    0x00080070: ("Manufacturer", "LO"),
    0x00080080: ("InstitutionName", "LO"),
    0x00080090: ("ReferringPhysicianName", "PN"),
    0x00081030: ("StudyDescription", "LO"),
    0x0008103E: ("SeriesDescription", "LO"),
    0x00100010: ("PatientName", "PN"),
    0x00100020: ("PatientID", "LO"),
    0x00100030: ("PatientBirthDate", "DA"),
    0x00101000: ("OtherPatientIDs", "LO"),
    0x00180010: ("ContrastBolusAgent", "LO"),
    0x00180050: ("SliceThickness", "DS"),
    0x00180081: ("EchoTime", "DS"),
    0x00180087: ("MagneticFieldStrength", "DS"),
    0x00181030: ("ProtocolName", "LO"),
    0x00181120: ("GantryDetectorTilt", "DS"),
    0x0019100A: ("NumberOfImagesInMosaic", "US"),
    0x0020000D: ("StudyInstanceUID", "UI"),
    0x0020000E: ("SeriesInstanceUID", "UI"),
    0x00200011: ("SeriesNumber", "IS"),
    0x00200012: ("AcquisitionNumber", "IS"),
    0x00200013: ("InstanceNumber", "IS"),
    0x00200032: ("ImagePositionPatient", "DS"),
    0x00200037: ("ImageOrientationPatient", "DS"),
    0x00280002: ("SamplesPerPixel", "US"),
    0x00280008: ("NumberOfFrames", "IS"),
    0x00280010: ("Rows", "US"),
    0x00280011: ("Columns", "US"),
    0x00280030: ("PixelSpacing", "DS"),
    0x00280100: ("BitsAllocated", "US"),
}
CHARSET_TAG = 0x00080005
MOSAIC_TAG = 0x0019100A  # Siemens NumberOfImagesInMosaic (private)
CSA_IMAGE_TAG = 0x00291010  # Siemens CSA image header: the mosaic count where 0019,100A is absent
GEOMETRY = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")  # always lists
LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UT", b"UN", b"UC", b"UR", b"SV", b"UV"}
PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
BUFFER = 64 * 1024
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<L")
_TAG = struct.Struct("<HH")
_IMPLICIT_HEAD = struct.Struct("<HHL")  # tag and 32-bit length (implicit VR, items, delimiters)


class Fallback(Exception):
    """The file is outside what this scanner handles; read it with pydicom."""


def _skip_undefined(buf: bytes, pos: int, explicit: bool) -> int:
    """Position after an undefined-length sequence/item starting at pos (items walked, not searched).

    Iterative, with a stack of the open undefined-length sequences and items, and flat like
    _walk_wanted: vendor headers (Siemens XA) nest thousands of elements in such sequences before
    group 0028, and a function call per element was a fifth of the index's time on the shared corpus.
    It steps exactly as _skip_item/_element do (an undefined-length pixel data element inside an item,
    an icon's, is walked into: its fragments read as elements)."""
    n = len(buf)
    tag_len, u16, u32, long_vrs = _IMPLICIT_HEAD.unpack_from, _U16.unpack_from, _U32.unpack_from, LONG_VRS
    stack = [(True, explicit)]  # (a sequence level?, explicit VR inside)
    while stack:
        if pos + 8 > n:
            raise Fallback(LONGER)
        group, elem, length = tag_len(buf, pos)
        in_sequence, ex = stack[-1]
        if in_sequence:
            pos += 8
            if group != 0xFFFE:
                raise Fallback("element outside an item")
            if elem == 0xE0DD:  # sequence delimiter
                stack.pop()
            elif elem == 0xE000:  # item
                if length == 0xFFFFFFFF:
                    stack.append((False, ex))
                else:
                    pos += length
            else:
                raise Fallback("unexpected delimiter")
            continue
        if group == 0xFFFE and elem == 0xE00D:  # item delimiter
            pos += 8
            stack.pop()
            continue
        if ex and group != 0xFFFE:
            vr = buf[pos + 4:pos + 6]
            if vr in long_vrs:
                length = u32(buf, pos + 8)[0]
                start = pos + 12
            else:
                length = u16(buf, pos + 6)[0]
                start = pos + 8
        else:
            vr = b""
            start = pos + 8
        tag = (group << 16) | elem
        if length == 0xFFFFFFFF:
            if tag not in PIXEL_TAGS:  # SQ, or UN holding a sequence (implicit VR inside)
                stack.append((True, ex and vr != b"UN"))
            pos = start
            continue
        pos = start + length
        if pos > n and tag not in PIXEL_TAGS:
            raise Fallback(LONGER)
    return pos


def _skip_item(buf: bytes, pos: int, explicit: bool) -> int:
    n = len(buf)
    while pos + 8 <= n:
        group, elem = _TAG.unpack_from(buf, pos)
        if group == 0xFFFE and elem == 0xE00D:  # item delimiter
            return pos + 8
        pos = _element(buf, pos, explicit)[0]
    raise Fallback(LONGER)


def _element(buf: bytes, pos: int, explicit: bool) -> tuple[int, int, bytes, int, int]:
    """(position after the element, tag, VR, value offset, length); undefined-length sequences skipped."""
    group, elem = _TAG.unpack_from(buf, pos)
    tag = (group << 16) | elem
    if explicit and group != 0xFFFE:
        vr = buf[pos + 4:pos + 6]
        if vr in LONG_VRS:
            length = _U32.unpack_from(buf, pos + 8)[0]
            start = pos + 12
        else:
            length = _U16.unpack_from(buf, pos + 6)[0]
            start = pos + 8
    else:
        vr = b""
        length = _U32.unpack_from(buf, pos + 4)[0]
        start = pos + 8
    if length == 0xFFFFFFFF:
        if tag in PIXEL_TAGS:
            return start, tag, vr, start, length
        # SQ, or UN holding a sequence: contents are always implicit-VR-LE when the VR is UN
        return _skip_undefined(buf, start, explicit and vr != b"UN"), tag, vr, start, length
    end = start + length
    if end > len(buf) and tag not in PIXEL_TAGS:
        raise Fallback(LONGER)
    return end, tag, vr, start, length


LAST_WANTED = max(TAGS)
UNCOMPRESSED = {IMPLICIT_LE, EXPLICIT_LE}


_HEAD = struct.Struct("<HH2sH")
TEXT_VRS = {"LO", "SH", "PN", "LT", "ST", "UT", "CS", "DA", "TM", "UI", "DS", "IS"}


def _walk_wanted(buf: bytes, pos: int, explicit: bool, raw: dict[int, tuple[bytes, bytes]]) -> int:
    """Walk top-level elements from pos, keeping the wanted ones, until past the last wanted tag.
    Returns the position of the first element not walked. (The hot loop: kept flat on purpose, one
    struct call per short element, one loop per VR encoding; a value running past the buffer raises
    Fallback(LONGER) once the walk ends, or at once for a wanted one.)"""
    n = len(buf)
    wanted = TAGS
    last = LAST_WANTED
    if explicit:
        head, u32, long_vrs = _HEAD.unpack_from, _U32.unpack_from, LONG_VRS
        while pos + 8 <= n:
            group, elem, vr, length = head(buf, pos)
            tag = (group << 16) | elem
            if tag > last:
                return pos
            if vr in long_vrs:
                length = u32(buf, pos + 8)[0]
                if length == 0xFFFFFFFF:  # only long VRs have undefined lengths
                    pos = _skip_undefined(buf, pos + 12, vr != b"UN")
                    continue
                start = pos + 12
            else:
                start = pos + 8
            pos = start + length
            if tag in wanted:
                if pos > n:
                    raise Fallback(LONGER)
                raw[tag] = (vr, buf[start:pos])
    else:
        ihead = _IMPLICIT_HEAD.unpack_from
        while pos + 8 <= n:
            group, elem, length = ihead(buf, pos)
            tag = (group << 16) | elem
            if tag > last:
                return pos
            if length == 0xFFFFFFFF:
                pos = _skip_undefined(buf, pos + 8, False)
                continue
            start = pos + 8
            pos = start + length
            if tag in wanted:
                if pos > n:
                    raise Fallback(LONGER)
                raw[tag] = (b"", buf[start:pos])
    if pos > n:
        raise Fallback(LONGER)
    return pos


def _walk_to(buf: bytes, pos: int, explicit: bool, targets: set[int]) -> dict[int, tuple[int, int]]:
    """Walk top-level elements from pos up to the last of ``targets``; tag -> (value start, length)
    of those found. Raises Fallback(LONGER) if the buffer ends first."""
    found: dict[int, tuple[int, int]] = {}
    last = max(targets)
    n = len(buf)
    while pos + 8 <= n:
        group, elem = _TAG.unpack_from(buf, pos)
        if (group << 16) | elem > last:
            return found
        nxt, tag, _, vstart, length = _element(buf, pos, explicit)
        if tag in targets:
            found[tag] = (vstart, length)
            if tag == last:
                return found
        pos = nxt
    raise Fallback(LONGER)


def _encapsulated_complete(fd: int, size: int) -> bool:
    """Encapsulated pixel data is complete when the file ends with the sequence delimiter."""
    return _tail(fd, 8, size - 8)[:4] == b"\xfe\xff\xdd\xe0"


def _tail(fd: int, nbytes: int, offset: int) -> bytes:
    return os.pread(fd, nbytes, max(offset, 0))


def _pixels_from_tail(fd: int, size: int, raw: dict[int, tuple[bytes, bytes]], ts: str, explicit: bool,
                      walked_to: int) -> str | None:
    """'ok' when the pixel data element provably ends the file at its full length, None if unsure.

    Uncompressed: the element header must sit exactly rows*cols*frames*samples*bits/8 bytes (even-
    padded) before the end of the file; encapsulated: the file must end with the sequence
    delimiter. One small read instead of walking the private groups between (0028) and (7FE0)."""
    if ts not in UNCOMPRESSED:
        return "ok" if size >= walked_to + 8 and _encapsulated_complete(fd, size) else None
    try:
        rows = _U16.unpack_from(raw[0x00280010][1], 0)[0]
        cols = _U16.unpack_from(raw[0x00280011][1], 0)[0]
        bits = _U16.unpack_from(raw[0x00280100][1], 0)[0]
        spp = _U16.unpack_from(raw[0x00280002][1], 0)[0] if 0x00280002 in raw else 1
        frames = int(float(raw[0x00280008][1].decode("ascii").strip("\x00 ") or 1)) if 0x00280008 in raw else 1
    except (KeyError, ValueError, struct.error):
        return None
    expected = rows * cols * frames * spp * bits // 8
    expected += expected % 2
    head = 12 if explicit else 8
    at = size - expected - head
    if at < walked_to:
        return None
    h = _tail(fd, head, at)
    if len(h) < head or _TAG.unpack_from(h, 0) != (0x7FE0, 0x0010):
        return None
    length = _U32.unpack_from(h, 8 if explicit else 4)[0]
    return "ok" if length == expected else None


SHARED_FG, PER_FRAME_FG = 0x52009229, 0x52009230
PLANE_POSITION, PLANE_ORIENTATION, PIXEL_MEASURES = 0x00209113, 0x00209116, 0x00289110


def _items(buf: bytes, start: int, length: int) -> list[tuple[int, int]]:
    """(start, end) of each item's content in an explicit-VR sequence value."""
    out = []
    pos = start
    stop = start + length if length != 0xFFFFFFFF else len(buf)
    while pos + 8 <= stop:
        group, elem = _TAG.unpack_from(buf, pos)
        ilen = _U32.unpack_from(buf, pos + 4)[0]
        pos += 8
        if (group, elem) == (0xFFFE, 0xE0DD):
            break
        if (group, elem) != (0xFFFE, 0xE000):
            raise Fallback("malformed sequence")
        if ilen == 0xFFFFFFFF:
            end = _skip_item(buf, pos, True)
            out.append((pos, end - 8))
            pos = end
        else:
            out.append((pos, pos + ilen))
            pos += ilen
    return out


def _children(buf: bytes, start: int, end: int) -> dict[int, tuple[int, int, int]]:
    """tag -> (value start, length, position after) of the elements of one item."""
    out = {}
    pos = start
    while pos + 8 <= end:
        nxt, tag, _, vstart, length = _element(buf, pos, True)
        out[tag] = (vstart, length, nxt)
        pos = nxt
    return out


def _first_item_value(buf: bytes, item: dict[int, tuple[int, int, int]], seq: int, tag: int) -> bytes | None:
    if seq not in item:
        return None
    vstart, length, _ = item[seq]
    items = _items(buf, vstart, length)
    if not items:
        return None
    inner = _children(buf, *items[0])
    if tag not in inner:
        return None
    s, n, _ = inner[tag]
    return buf[s:s + n]


def _ds(raw: bytes | None) -> list[float] | None:
    if raw is None:
        return None
    return [float(x) for x in raw.decode("ascii").strip("\x00 ").split("\\") if x.strip()]


def _functional_groups(buf: bytes, pos: int, tags: dict[str, Any]) -> None:
    """Enhanced multi-frame: orientation, spacing and per-frame positions, as index._frame_geometry.

    The functional groups sit after large vendor sequences (Siemens XA: thousands of nested
    elements), so their element headers (explicit VR LE 'SQ') are located with bytes.find, at C
    speed, and accepted only if the pattern occurs once and an item follows; else the elements
    are walked from pos. Per-frame positions likewise by pattern, checked to be one per frame."""
    if buf.find(b"\xe0\x7f\x10\x00", pos) < 0:
        raise Fallback(LONGER)  # the groups end where the pixel data starts: read more first
    found: dict[int, tuple[int, int]] = {}
    for tag, pattern in ((SHARED_FG, b"\x00\x52\x29\x92SQ\x00\x00"), (PER_FRAME_FG, b"\x00\x52\x30\x92SQ\x00\x00")):
        at = buf.find(pattern, pos)
        if at >= 0 and buf.find(pattern, at + 1) < 0 and buf[at + 12:at + 16] == b"\xfe\xff\x00\xe0":
            found[tag] = (at + 12, _U32.unpack_from(buf, at + 8)[0])
    if PER_FRAME_FG not in found:
        found = _walk_to(buf, pos, True, {SHARED_FG, PER_FRAME_FG})
    if PER_FRAME_FG not in found:
        raise Fallback("no per-frame functional groups")
    shared = _items(buf, *found[SHARED_FG]) if SHARED_FG in found else []
    sh = _children(buf, *shared[0]) if shared else {}
    iop = _first_item_value(buf, sh, PLANE_ORIENTATION, 0x00200037)
    ps = _first_item_value(buf, sh, PIXEL_MEASURES, 0x00280030)
    th = _first_item_value(buf, sh, PIXEL_MEASURES, 0x00180050)
    ipps = _frame_positions_quick(buf, found[PER_FRAME_FG][0], int(tags["NumberOfFrames"]))
    if ipps is not None:
        # what the shared groups lack comes from the first frame's groups, as the walk below takes it
        first = found[PER_FRAME_FG][0]
        iop = iop if iop is not None else _in_first_seq(buf, first, b"\x20\x00\x16\x91", b"\x20\x00\x37\x00")
        ps = ps if ps is not None else _in_first_seq(buf, first, b"\x28\x00\x10\x91", b"\x28\x00\x30\x00")
        th = th if th is not None else _in_first_seq(buf, first, b"\x28\x00\x10\x91", b"\x18\x00\x50\x00")
    if ipps is None:
        ipps = _frame_positions(buf, found[PER_FRAME_FG], [iop, ps, th])
        iop, ps, th = ipps.pop()  # type: ignore[misc]
    if iop is not None:
        tags["ImageOrientationPatient"] = _ds(iop)
    if ps is not None:
        tags["PixelSpacing"] = _ds(ps)
    if th is not None and "SliceThickness" not in tags and _ds(th):
        tags["SliceThickness"] = _ds(th)[0]
    if all(p is not None and len(p) == 3 for p in ipps):
        tags["FramePositions"] = ipps


def _in_first_seq(buf: bytes, start: int, seq_tag: bytes, elem_tag: bytes) -> bytes | None:
    """Value of a DS element in the first item of the first sequence with that tag after start,
    found by byte patterns (the element must sit in the item's first 256 bytes)."""
    at = buf.find(seq_tag + b"SQ\x00\x00", start)
    if at < 0 or buf[at + 12:at + 16] != b"\xfe\xff\x00\xe0":
        return None
    el = buf.find(elem_tag + b"DS", at + 20, at + 20 + 256)
    if el < 0:
        return None
    return buf[el + 8:el + 8 + _U16.unpack_from(buf, el + 6)[0]]


def _frame_positions_quick(buf: bytes, start: int, n_frames: int) -> list[list[float] | None] | None:
    """Per-frame ImagePositionPatient found by their byte patterns (PlanePositionSequence, item,
    IPP element) between the per-frame groups and the pixel data; None unless exactly one per frame."""
    seq = b"\x20\x00\x13\x91SQ\x00\x00"
    ipp_head = b"\x20\x00\x32\x00DS"
    stop = buf.find(b"\xe0\x7f\x10\x00", start)
    stop = len(buf) if stop < 0 else stop
    out: list[list[float] | None] = []
    at = buf.find(seq, start, stop)
    while at >= 0:
        item = at + 12
        if buf[item:item + 4] != b"\xfe\xff\x00\xe0" or buf[item + 8:item + 14] != ipp_head:
            return None
        length = _U16.unpack_from(buf, item + 14)[0]
        out.append(_ds(buf[item + 16:item + 16 + length]))
        at = buf.find(seq, item + 16 + length, stop)
    return out if len(out) == n_frames else None


def _frame_positions(buf: bytes, per_frame: tuple[int, int], shared: list[bytes | None]) -> list[Any]:
    """Walk every per-frame item (the general case); the last element returned is [iop, ps, th]."""
    iop, ps, th = shared
    ipps: list[Any] = []
    for fstart, fend in _items(buf, *per_frame):
        fr = _children(buf, fstart, fend)
        ipp = _first_item_value(buf, fr, PLANE_POSITION, 0x00200032)
        iop = iop if iop is not None else _first_item_value(buf, fr, PLANE_ORIENTATION, 0x00200037)
        ps = ps if ps is not None else _first_item_value(buf, fr, PIXEL_MEASURES, 0x00280030)
        th = th if th is not None else _first_item_value(buf, fr, PIXEL_MEASURES, 0x00180050)
        ipps.append(_ds(ipp))
    ipps.append([iop, ps, th])
    return ipps


def _csa_mosaic(buf: bytes, pos: int, explicit: bool) -> int:
    """Slices of a Siemens mosaic from the CSA image header (nibabel parses it), 0 if absent."""
    found = _walk_to(buf, pos, explicit, {CSA_IMAGE_TAG})
    if CSA_IMAGE_TAG not in found:
        return 0
    vstart, length = found[CSA_IMAGE_TAG]
    from nibabel.nicom import csareader

    try:
        return int(csareader.get_n_mosaic(csareader.read(buf[vstart:vstart + length])) or 0)
    except Exception:  # noqa: BLE001 - a malformed CSA header: the pydicom path says the same
        return 0


def _text(raw: bytes, encoding: str) -> str:
    return raw.decode(encoding, errors="replace").rstrip("\x00 ").lstrip(" ") if raw else ""


FREE_TEXT_VRS = {"LO", "SH", "PN", "LT", "ST", "UT"}


def _number(keyword: str, vr: str, s: str) -> Any:
    """A DS/IS value: a list for the geometry tags, else the first number; None if empty."""
    parts = [p.strip() for p in s.split("\\")]
    if vr == "IS":
        vals: list[Any] = [int(float(p)) for p in parts if p]
    else:
        vals = [float(p) for p in parts if p]
    if not vals:
        return None
    return vals if keyword in GEOMETRY else vals[0]


def scan(path: str) -> tuple[str, dict[str, Any]]:
    """('ok'|'truncated'|'dicomdir', tags) for a Part-10 file, raising Fallback where pydicom must read it."""
    try:
        return _scan(path, BUFFER)
    except Fallback as exc:
        if str(exc) != LONGER:
            raise
    return _scan(path, 16 * BUFFER)  # a long private header (GE, Philips): one larger read


LONGER = "header longer than the buffer"


def _scan(path: str, buffer: int) -> tuple[str, dict[str, Any]]:
    # one descriptor for the header read and the tail check: os.open/os.read/os.pread skip the buffered
    # file object that open() builds, a measurable share of a scan of 10^4+ small files
    fd = os.open(path, os.O_RDONLY)
    try:
        return _scan_open(fd, os.fstat(fd).st_size, os.read(fd, buffer))
    finally:
        os.close(fd)


def _scan_open(fd: int, size: int, buf: bytes) -> tuple[str, dict[str, Any]]:
    if len(buf) < 132 or buf[128:132] != b"DICM":
        raise Fallback("no Part-10 preamble")
    ts, media_class, pos = _file_meta(buf)
    if media_class == "1.2.840.10008.1.3.10":
        return "dicomdir", {}
    if ts == IMPLICIT_LE:
        explicit = False
    elif ts and ts != "1.2.840.10008.1.2.2" and not ts.startswith("1.2.840.10008.1.2.1.99"):
        explicit = True  # explicit VR little endian, and every compressed syntax (dataset is explicit LE)
    else:
        raise Fallback(f"transfer syntax {ts or 'missing'}")
    raw: dict[int, tuple[bytes, bytes]] = {}
    pos = after_wanted = _walk_wanted(buf, pos, explicit, raw)
    if pos + 8 > len(buf) and len(buf) < size:  # the buffer ended between elements, the header did not
        raise Fallback(LONGER)
    pixel_state = _pixels_from_tail(fd, size, raw, ts, explicit, pos)
    if pixel_state is None:  # the quick check could not tell: walk on to the pixel data
        pixel_state = _pixels_by_walking(fd, buf, pos, size, explicit)
    if pixel_state == "truncated":
        return "truncated", {}
    tags = _decoded_tags(raw, _encoding(raw), ts, pixel_state == "ok")
    if int(tags.get("NumberOfFrames", 1)) > 1:
        if not explicit:
            raise Fallback("multi-frame, implicit VR")
        _functional_groups(buf, after_wanted, tags)
    if "MOSAIC" in str(tags.get("ImageType", "")).upper() and "MosaicImages" not in tags:
        n_mosaic = _csa_mosaic(buf, after_wanted, explicit)
        if n_mosaic > 1:
            tags["MosaicImages"] = n_mosaic
    if "MosaicImages" in tags and (tags["MosaicImages"] <= 1 or "MOSAIC" not in str(tags.get("ImageType", "")).upper()):
        del tags["MosaicImages"]
    return "ok", tags


def _file_meta(buf: bytes) -> tuple[str, str, int]:
    """(transfer syntax, media storage SOP class, position after the group-2 file meta, always explicit LE).
    Flat like _walk_wanted: it runs once per file."""
    pos, ts, media_class = 132, "", ""
    n = len(buf)
    head, u32 = _HEAD.unpack_from, _U32.unpack_from
    while pos + 8 <= n:
        group, elem, vr, length = head(buf, pos)
        if group != 0x0002:
            break
        if vr in LONG_VRS:
            length = u32(buf, pos + 8)[0]
            start = pos + 12
        else:
            start = pos + 8
        if length == 0xFFFFFFFF:
            raise Fallback("undefined length in the file meta")
        end = start + length
        if end > n:
            raise Fallback(LONGER)
        if elem == 0x0010:
            ts = _text(buf[start:end], "ascii")
        elif elem == 0x0002:
            media_class = _text(buf[start:end], "ascii")
        pos = end
    return ts, media_class, pos


def _pixels_by_walking(fd: int, buf: bytes, pos: int, size: int, explicit: bool) -> str:
    """ok | truncated | no_pixels, by walking the elements after the wanted tags to the pixel data."""
    n = len(buf)
    while pos + 8 <= n:
        if _U16.unpack_from(buf, pos)[0] > 0x7FE0:
            return "no_pixels"
        end, tag, vr, start, length = _element(buf, pos, explicit)
        if tag in PIXEL_TAGS:
            if length == 0xFFFFFFFF:  # encapsulated: must end with a sequence delimiter
                return "ok" if _encapsulated_complete(fd, size) else "truncated"
            return "ok" if end <= size else "truncated"
        pos = end
    if pos < size:
        raise Fallback(LONGER)
    return "no_pixels"


def _encoding(raw: dict[int, tuple[bytes, bytes]]) -> str:
    """The Python codec of the values read, from SpecificCharacterSet (or a fallback for a set we do not decode)."""
    charset = _text(raw.get(CHARSET_TAG, (b"", b""))[1], "ascii").upper()
    if charset in ("", "ISO_IR 6", "ISO_IR 100", "ISO 2022 IR 6", "ISO 2022 IR 100"):
        return "latin-1" if "100" in charset else "ascii"
    if charset == "ISO_IR 192":
        return "utf-8"
    if all(max(v, default=0) < 0x80 and 0x1B not in v for t, (_, v) in raw.items() if TAGS[t][1] in TEXT_VRS):
        return "ascii"  # any other character set: the values read are plain ASCII in all of them
    raise Fallback(f"character set {charset}")


def _decoded_tags(raw: dict[int, tuple[bytes, bytes]], encoding: str, ts: str, has_pixels: bool) -> dict[str, Any]:
    """The values read, decoded as pydicom gives them (the index compares both paths on every shared file).
    The text decoding is inlined: this loop runs ~30 times a file."""
    tags: dict[str, Any] = {"TransferSyntaxUID": ts, "HasPixelData": has_pixels}
    for tag, (_, value) in raw.items():
        keyword, vr = TAGS[tag]
        if tag == CHARSET_TAG or not value:
            continue
        if vr == "US":
            # the private mosaic count is US in explicit files, bytes (little endian) in implicit ones: both read as US
            v: Any = _U16.unpack_from(value, 0)[0] if len(value) >= 2 else None
        else:
            s = value.decode(encoding if vr in FREE_TEXT_VRS else "ascii", errors="replace").rstrip("\x00 ").lstrip(" ")
            if vr == "DS" or vr == "IS":
                if "\\" in s or keyword in GEOMETRY:
                    v = _number(keyword, vr, s)
                elif not s:
                    continue
                else:  # one number, the common case
                    v = float(s) if vr == "DS" else int(float(s))
            elif vr == "UI":
                v = s.rstrip("\x00")
            elif keyword == "ImageType":
                v = s.replace(" \\", "\\").replace("\\ ", "\\")
            else:
                v = s
        if v is None or v == "":
            continue
        tags["MosaicImages" if tag == MOSAIC_TAG else keyword] = v
    return tags
