"""The PACS by DIMSE (``pacs.protocol: dimse``): C-FIND, C-MOVE to our own storage SCP, C-STORE, with
pynetdicom, behind the few client calls the stages make of dicomweb-client, so that ``retrieve``, ``push``
and ``watch`` run unchanged on a PACS that speaks only classic DICOM networking.

- Queries (C-FIND, Study Root) return each match as DICOM JSON (``Dataset.to_json_dict``), the shape
  QIDO-RS answers have, so the query keys, the audit and the pseudonyms are the same either way.
- Retrieval is C-MOVE at IMAGE level, one instance per request (resumable by SOPInstanceUID as by
  DICOMweb), to ``pacs.dimse.calling_aet``, whose storage SCP this client runs on
  ``pacs.dimse.store_port`` while it lives: the PACS must know that AE title at this host and port. The
  SCP accepts every transfer syntax, so instances arrive as the PACS stores them (no transcoding).
- Storage (C-STORE) proposes the SEG's own SOP class and transfer syntax.

Errors, as cohortseg.pacs has them: an association the PACS rejects (called or calling AE title unknown),
a move destination it does not know (status A801) and a refusal of the very first C-MOVE (Orthanc answers an
unknown destination with C000) are AuthError, nothing else can succeed; a PACS that does not answer, an
aborted association and a later failed C-MOVE are retried (Unavailable); other refusals are a PacsError with
the DIMSE status.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .pacs import AuthError, PacsError, Unavailable
from .settings import PacsSettings

log = logging.getLogger(__name__)
PENDING = (0xFF00, 0xFF01)
MOVE_DESTINATION_UNKNOWN = 0xA801
LEVEL_KEYS = {"STUDY": ("StudyInstanceUID", "PatientID", "StudyDate"),
              "SERIES": ("StudyInstanceUID", "SeriesInstanceUID", "Modality"),
              "IMAGE": ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")}


def _with_timeouts(ae: Any, seconds: float) -> Any:
    """``ae`` with every association step (ACSE, DIMSE, network) bounded by ``pacs.timeout_s``."""
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = seconds
    return ae


class DimseClient:
    """C-FIND / C-MOVE / C-STORE against ``pacs.dimse``; the subset of dicomweb-client's API the stages use."""

    def __init__(self, settings: PacsSettings) -> None:
        from pynetdicom import AE
        from pynetdicom.sop_class import (StudyRootQueryRetrieveInformationModelFind,
                                          StudyRootQueryRetrieveInformationModelMove)

        d = settings.dimse
        if not d.host or not d.called_aet:
            raise PacsError("pacs.dimse.host and pacs.dimse.called_aet must name the PACS for pacs.protocol: dimse")
        self.settings, self.where = settings, f"{d.called_aet}@{d.host}:{d.port}"
        self.find_model = StudyRootQueryRetrieveInformationModelFind
        self.move_model = StudyRootQueryRetrieveInformationModelMove
        self.ae = _with_timeouts(AE(ae_title=d.calling_aet), settings.timeout_s)
        self.ae.add_requested_context(self.find_model)
        self.ae.add_requested_context(self.move_model)
        self.received: dict[str, Any] = {}
        self.moved = False  # whether a C-MOVE has succeeded (see _move_failed)
        self.sink: tuple[Path | None, set[str]] = (None, set())  # where a series move writes, and what
        self.on_instance: Callable[[], None] | None = None
        self.lock = threading.Lock()
        self.server: Any = None

    # -- association -----------------------------------------------------------------------------------
    def _associate(self, ae: Any = None) -> Any:
        d = self.settings.dimse
        assoc = (ae or self.ae).associate(d.host, d.port, ae_title=d.called_aet)
        if assoc.is_established:
            return assoc
        if assoc.is_rejected:
            raise AuthError(f"the PACS {self.where} rejected the association from AE title '{d.calling_aet}': check "
                            "pacs.dimse.called_aet and that the PACS lists the calling AE title")
        raise Unavailable(f"no association with the PACS {self.where} (not answering, or aborted)")

    def _find(self, level: str, keys: dict[str, Any], fields: list[str] | tuple[str, ...]) -> list[dict[str, Any]]:
        from pydicom import Dataset

        query = Dataset()
        query.QueryRetrieveLevel = level
        for name in (*LEVEL_KEYS[level], *fields):
            setattr(query, name, "")
        for name, value in keys.items():
            setattr(query, name, value)
        assoc = self._associate()
        try:
            out = []
            for status, identifier in assoc.send_c_find(query, self.find_model):
                code = getattr(status, "Status", None)
                if code is None:
                    raise Unavailable(f"the PACS {self.where} did not answer the C-FIND")
                if code in PENDING and identifier is not None:
                    out.append(identifier.to_json_dict())
                elif code != 0x0000:
                    raise PacsError(f"the PACS {self.where} refused the {level} query (C-FIND status 0x{code:04X})")
            return out
        finally:
            assoc.release()

    # -- dicomweb-client's calls -------------------------------------------------------------------------
    def search_for_studies(self, search_filters: dict[str, Any] | None = None, fields: list[str] | None = None,
                           get_remaining: bool = True) -> list[dict[str, Any]]:
        return self._find("STUDY", dict(search_filters or {}), fields or [])

    def search_for_series(self, study_instance_uid: str, fields: list[str] | None = None,
                          get_remaining: bool = True) -> list[dict[str, Any]]:
        return self._find("SERIES", {"StudyInstanceUID": study_instance_uid}, fields or [])

    def search_for_instances(self, study_instance_uid: str, series_instance_uid: str,
                             get_remaining: bool = True) -> list[dict[str, Any]]:
        return self._find("IMAGE", {"StudyInstanceUID": study_instance_uid,
                                    "SeriesInstanceUID": series_instance_uid}, [])

    def retrieve_instance(self, study_instance_uid: str, series_instance_uid: str, sop_instance_uid: str,
                          media_types: Any = None) -> Any:
        """C-MOVE of one instance to our storage SCP; the dataset as it arrived."""
        from pydicom import Dataset

        self._serve()
        query = Dataset()
        query.QueryRetrieveLevel = "IMAGE"
        query.StudyInstanceUID, query.SeriesInstanceUID = study_instance_uid, series_instance_uid
        query.SOPInstanceUID = sop_instance_uid
        self._move(query)
        with self.lock:
            ds = self.received.pop(sop_instance_uid, None)
        if ds is None:
            raise Unavailable(f"the PACS {self.where} reported the C-MOVE done but sent no instance")
        return ds

    def _move(self, query: Any) -> None:
        """One C-MOVE to our storage SCP; its failure statuses as _move_failed says."""
        d = self.settings.dimse
        assoc = self._associate()
        try:
            for status, _ in assoc.send_c_move(query, d.calling_aet, self.move_model):
                code = getattr(status, "Status", None)
                if code is None:
                    raise Unavailable(f"the PACS {self.where} did not answer the C-MOVE")
                if code == MOVE_DESTINATION_UNKNOWN:
                    raise AuthError(f"the PACS {self.where} does not know the move destination '{d.calling_aet}' "
                                    f"(C-MOVE status 0xA801): register that AE title in the PACS with this host and "
                                    f"port {d.store_port} (pacs.dimse.store_port)")
                if code not in PENDING and code != 0x0000:
                    self._move_failed(code, status)
        finally:
            assoc.release()
        self.moved = True

    def move_series(self, study_instance_uid: str, series_instance_uid: str, uids: list[str], folder: Path,
                    on_instance: Callable[[], None] | None = None) -> int:
        """The instances of ``uids`` not yet in ``folder`` moved there in one C-MOVE (SERIES level when none
        is held, else IMAGE level with the list of the missing ones), written as they arrive; how many came.
        Unavailable if some did not come (the retry asks only for those)."""
        from pydicom import Dataset

        missing = [u for u in uids if not (folder / f"{u}.dcm").exists()]
        if not missing:
            return 0
        self._serve()
        query = Dataset()
        query.StudyInstanceUID, query.SeriesInstanceUID = study_instance_uid, series_instance_uid
        if len(missing) == len(uids):
            query.QueryRetrieveLevel = "SERIES"
        else:
            query.QueryRetrieveLevel = "IMAGE"
            query.SOPInstanceUID = missing
        with self.lock:
            self.sink, self.on_instance = (folder, set(missing)), on_instance
        try:
            self._move(query)
        finally:
            with self.lock:
                self.sink, self.on_instance = (None, set()), None
        still = [u for u in missing if not (folder / f"{u}.dcm").exists()]
        if still:
            raise Unavailable(f"the PACS {self.where} moved {len(missing) - len(still)} of {len(missing)} instances "
                              "of the series")
        return len(missing)

    def _move_failed(self, code: int, status: Any) -> None:
        """A C-MOVE that did not complete. B000 (some sub-operations failed) is left to the caller, which
        sees what did not arrive. A refusal before anything was attempted, on this client's first C-MOVE,
        is taken for the configuration (PACSs answer an unknown destination with A801 as the standard says,
        or, like Orthanc, C000 "unable to process", with no sub-operation): every stage stops with the
        status and what to check. Otherwise it is this request's failure: retried, then recorded for the
        series."""
        if code == 0xB000:
            return
        d = self.settings.dimse
        attempted = sum(int(getattr(status, k, 0) or 0) for k in ("NumberOfCompletedSuboperations",
                                                                    "NumberOfFailedSuboperations",
                                                                    "NumberOfWarningSuboperations"))
        comment = str(getattr(status, "ErrorComment", "") or "")
        if not self.moved and not attempted and 0xA000 <= code <= 0xCFFF:
            raise AuthError(f"the PACS {self.where} refused to move the first instance to '{d.calling_aet}' (C-MOVE "
                            f"status 0x{code:04X}{': ' + comment if comment else ''}): check that it lists that AE "
                            f"title as a move destination at this host and port {d.store_port} "
                            "(pacs.dimse.calling_aet, pacs.dimse.store_port)")
        raise Unavailable(f"the PACS {self.where} could not move the instances (C-MOVE status 0x{code:04X})")

    def store_instances(self, datasets: list[Any]) -> None:
        """C-STORE of each dataset, proposing its own SOP class and transfer syntax."""
        from pynetdicom import AE

        for ds in datasets:
            ae = _with_timeouts(AE(ae_title=self.settings.dimse.calling_aet), self.settings.timeout_s)
            ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
            assoc = self._associate(ae)
            try:
                status = assoc.send_c_store(ds)
            finally:
                assoc.release()
            code = getattr(status, "Status", None)
            if code is None:
                raise Unavailable(f"the PACS {self.where} did not answer the C-STORE")
            if code != 0x0000 and not 0xB000 <= code <= 0xBFFF:  # Bxxx: stored, with a warning
                raise PacsError(f"the PACS {self.where} refused to store the instance (C-STORE status 0x{code:04X})")

    # -- our storage SCP (the C-MOVE destination) -------------------------------------------------------
    def _serve(self) -> None:
        if self.server is not None:
            return
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, evt

        scp = AE(ae_title=self.settings.dimse.calling_aet)
        for cx in StoragePresentationContexts:
            scp.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        _with_timeouts(scp, self.settings.timeout_s)
        scp.maximum_pdu_size = 0  # no limit: pynetdicom's default (16 kB) splits every image into many PDUs
        try:
            self.server = scp.start_server(("", self.settings.dimse.store_port), block=False,
                                           evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        except OSError as e:
            raise PacsError(f"cannot listen on pacs.dimse.store_port {self.settings.dimse.store_port} for the "
                            f"instances the PACS moves: {e.strerror}") from None

    def _on_store(self, event: Any) -> int:
        from .pseudonym import PRIVATE_MODE
        from .util import atomic_path

        ds = event.dataset
        ds.file_meta = event.file_meta
        ds.preamble = b"\x00" * 128  # saved as a Part-10 file, as the DICOMweb path saves it
        uid = str(ds.SOPInstanceUID)
        with self.lock:
            sink, expected = self.sink
        if sink is not None and uid in expected:  # a series move: written as it arrives, atomically
            with atomic_path(sink / f"{uid}.dcm", mode=PRIVATE_MODE) as tmp:
                ds.save_as(tmp)
            if self.on_instance is not None:
                self.on_instance()
        else:
            with self.lock:
                self.received[uid] = ds
        return 0x0000

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None
