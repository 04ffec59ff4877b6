import pandas as pd
import pytest

from cohortseg.config import load
from cohortseg.select import RuleError, effective_rules, evaluate, select, summarise

ROW = {"modality": "MR", "series_description": "AX T1 +C", "n_slices": 120, "contrast": "True", "plane": "axial",
       "obliquity_deg": 7.5,
       "image_type": "ORIGINAL\\PRIMARY", "postop": False, "slice_spacing": 1.0, "empty": None}


@pytest.mark.parametrize(
    "cond, expected",
    [
        ({"field": "modality", "equals": "mr"}, True),
        ({"field": "modality", "equals": "CT"}, False),
        ({"field": "contrast", "equals": True}, True),
        ({"field": "postop", "equals": False}, True),
        ({"field": "plane", "in": ["sagittal", "axial"]}, True),
        ({"field": "series_description", "regex": r"t1.*\+c"}, True),
        ({"field": "n_slices", "min": 100}, True),
        ({"field": "n_slices", "max": 99}, False),
        ({"field": "empty", "missing": True}, True),
        ({"field": "modality", "missing": True}, False),
        ({"not": {"field": "modality", "equals": "MR"}}, False),
        ({"any": [{"field": "modality", "equals": "CT"}, {"field": "plane", "equals": "axial"}]}, True),
        ({"all": [{"field": "modality", "equals": "CT"}, {"field": "plane", "equals": "axial"}]}, False),
        ({"field": "empty", "min": 1}, False),
        ({"orientation": ["axial"], "within_deg": 10}, True),
        ({"orientation": "sagittal"}, False),
    ],
)
def test_conditions(cond, expected):
    assert evaluate(cond, ROW) is expected


def test_unknown_field_and_operator_are_named():
    with pytest.raises(RuleError, match="unknown field 'nope'"):
        evaluate({"field": "nope", "equals": 1}, ROW)
    with pytest.raises(RuleError, match="exactly one operator"):
        evaluate({"field": "modality", "equals": "MR", "regex": "x"}, ROW)


def _series(rows):
    base = {"study": "stu-1", "status": "ok", "modality": "MR", "is_image": True, "image_type": "ORIGINAL\\PRIMARY",
            "sop_class": "mr", "postop": False, "series_description": "AX T1 +C", "contrast": True,
            "slice_gaps_uneven": False, "geometry_consistent": True, "n_slices": 120, "plane": "axial",
            "slice_spacing": 1.0, "slice_thickness": 1.0, "study_order": 0, "series_number": 1,
            "decodable": True, "n_volumes": 1, "missing_slices": 0, "obliquity_deg": 0.0, "gantry_tilt_deg": 0.0}
    return pd.DataFrame([{**base, **r} for r in rows])


def test_selection_reasons_and_tie_break():
    cfg = load(None)
    rules, tie = cfg["select"]["rules"], cfg["select"]["tie_break"]
    df = _series([
        {"subject": "sub-a", "series": "ser-1", "n_slices": 140, "series_number": 3},
        {"subject": "sub-a", "series": "ser-2", "n_slices": 176, "series_number": 4},  # most slices wins
        {"subject": "sub-a", "series": "ser-3", "image_type": "ORIGINAL\\PRIMARY\\LOCALIZER"},
        {"subject": "sub-b", "series": "ser-4", "contrast": False, "series_description": "AX T1"},
        {"subject": "sub-b", "series": "ser-5", "postop": True},
        {"subject": "sub-b", "series": "ser-6", "n_slices": 40},
        {"subject": "sub-c", "series": "ser-7", "series_description": "AX FLAIR", "contrast": False},
        {"subject": "sub-c", "series": "ser-8", "plane": "coronal"},
        {"subject": "sub-c", "series": "ser-9", "missing_slices": 1},
        {"subject": "sub-d", "series": "ser-10", "image_type": "DERIVED\\SECONDARY"},
        {"subject": "sub-d", "series": "ser-11", "slice_spacing": 0.8},  # thinner wins when slices tie
        {"subject": "sub-d", "series": "ser-12", "slice_spacing": 1.2},
    ])
    inc, exc = select(df, rules, tie)
    assert dict(zip(inc["subject"], inc["series"])) == {"sub-a": "ser-2", "sub-d": "ser-11"}
    reasons = dict(zip(exc["series"], exc["reason"]))
    assert reasons == {
        "ser-1": "not_chosen", "ser-3": "localizer", "ser-4": "no_contrast", "ser-5": "postoperative",
        "ser-6": "too_few_slices", "ser-7": "not_t1", "ser-8": "wrong_plane", "ser-9": "missing_slices",
        "ser-10": "derived", "ser-12": "not_chosen",
    }
    table, text = summarise(df, inc, exc, [r["reason"] for r in rules])
    subj = table[table["level"] == "subject"].set_index("reason")["count"].to_dict()
    # the subject's closest candidate (fewest failed rules; ties: the later rule) names why it is out
    assert subj == {"no_usable_series:too_few_slices": 1, "no_usable_series:wrong_plane": 1}
    # a post-operative T1c (fails one rule) is closer than a FLAIR (not T1 and no contrast), though
    # the FLAIR's first failing rule comes later in the list
    df2 = _series([
        {"subject": "sub-x", "series": "ser-1", "postop": True},
        {"subject": "sub-x", "series": "ser-2", "series_description": "AX FLAIR", "contrast": False},
    ])
    inc2, exc2 = select(df2, rules, tie)
    _, text2 = summarise(df2, inc2, exc2, [r["reason"] for r in rules])
    assert "sub-x (postoperative)" in text2
    assert "2 subjects included, 2 without a usable series" in text


def test_latest_tie_break_and_hook():
    df = _series([
        {"subject": "sub-a", "series": "ser-1", "study_order": 0},
        {"subject": "sub-a", "series": "ser-2", "study_order": 1},
    ])
    rules = [{"reason": "x", "reject_if": {"field": "modality", "equals": "CT"}}]
    inc, _ = select(df, rules, ["latest"])
    assert inc["series"].tolist() == ["ser-2"]
    inc, _ = select(df, rules, ["earliest"])
    assert inc["series"].tolist() == ["ser-1"]

    def hook(d):
        d.loc[d["series"] == "ser-1", "reason"] = "site_rule"
        return d

    inc, exc = select(df, rules, ["earliest"], hook=hook)
    assert inc["series"].tolist() == ["ser-2"] and exc["reason"].tolist() == ["site_rule"]


def test_empty_cohort_stops_with_one_clear_error(tmp_path):
    from cohortseg.select import run

    df = _series([{"subject": "sub-a", "series": "ser-1", "modality": "CT"}])
    df.to_csv(tmp_path / "series.tsv", sep="\t", index=False)
    pd.DataFrame({"subject": ["sub-a"], "has_mask": [True]}).to_csv(tmp_path / "subjects.tsv", sep="\t", index=False)
    from cohortseg.select import Config

    cfg = Config.from_config(load(None, {"private_dir": str(tmp_path / "private")}))
    with pytest.raises(SystemExit, match="empty cohort"):
        run(cfg, tmp_path / "series.tsv", tmp_path / "subjects.tsv", tmp_path / "inc.tsv", tmp_path / "exc.tsv",
            tmp_path / "sum.tsv", tmp_path / "sum.txt")
    assert not (tmp_path / "inc.tsv").exists()
    assert "wrong_modality" in (tmp_path / "exc.tsv").read_text()


def test_config_schema_rejects_unknown_keys_and_fills_defaults():
    from cohortseg.config import ConfigError

    cfg = load(None)
    assert cfg["split"]["folds"] == 5 and cfg["preprocess"]["size"] == "auto" and cfg["train"]["batch_size"] == "auto"
    assert cfg["train"]["base_filters"] == 16 and cfg["train"]["loss_alpha"] == 0.5
    with pytest.raises(ConfigError):
        load(None, {"trian": {}})
    with pytest.raises(ConfigError, match="outside results"):
        load(None, {"private_dir": "results/private"})


def test_config_reference_is_generated_from_the_schema():
    from cohortseg.config import REPO_ROOT
    from cohortseg.configdoc import render

    assert (REPO_ROOT / "config" / "README.md").read_text() == render(), "run: python -m cohortseg.configdoc > config/README.md"


def test_shipped_configs_validate():
    from cohortseg.config import REPO_ROOT

    for path in ("config/config.yaml", "config/demo.yaml", "config/hippocampus.yaml", "config/hippocampus-gpu.yaml",
                 "config/shared_corpus.yaml", "tests/config/tiny.yaml"):
        load(REPO_ROOT / path)


def test_orientation_tolerance():
    row = {**ROW, "obliquity_deg": 12.0}
    assert evaluate({"orientation": ["axial"], "within_deg": 15}, row)
    assert not evaluate({"orientation": ["axial"], "within_deg": 10}, row)
    with pytest.raises(RuleError, match="orientation condition"):
        evaluate({"orientation": ["oblique"]}, row)


def test_override_and_geometry_modes():
    cfg = load(None)
    sel = dict(cfg["select"])
    df = _series([
        {"subject": "sub-a", "series": "ser-1", "gantry_tilt_deg": 18.5, "slice_gaps_uneven": True, "n_slices": 28},
        {"subject": "sub-b", "series": "ser-2", "slice_gaps_uneven": True},
        {"subject": "sub-c", "series": "ser-3", "missing_slices": 2},
    ])
    # default: too few slices for sub-a; tilt and uneven spacing are corrected, not rejected
    inc, exc = select(df, effective_rules(sel), sel["tie_break"])
    assert dict(zip(exc["series"], exc["reason"])) == {"ser-1": "too_few_slices", "ser-3": "missing_slices"}
    assert inc.set_index("series")["geometry_correction"].to_dict() == {"ser-2": "uneven_spacing"}
    sel["override"] = {"too_few_slices": {"field": "n_slices", "max": 20}}
    inc, exc = select(df, effective_rules(sel), sel["tie_break"])
    assert inc.set_index("series")["geometry_correction"].to_dict() == {"ser-1": "gantry_tilt+uneven_spacing",
                                                                        "ser-2": "uneven_spacing"}
    table, text = summarise(df, inc, exc)
    assert "corrected:gantry_tilt+uneven_spacing" in set(table["reason"]) and "corrected on conversion: 2" in text
    sel.update(gantry_tilt="reject", uneven_spacing="reject")
    inc, exc = select(df, effective_rules(sel), sel["tie_break"])
    assert inc.empty
    assert dict(zip(exc["series"], exc["reason"])) == {"ser-1": "gantry_tilt", "ser-2": "uneven_spacing",
                                                        "ser-3": "missing_slices"}
    with pytest.raises(RuleError, match="not a rule"):
        effective_rules({**sel, "override": {"nonsense": None}})
    sel["override"] = {"too_few_slices": None}
    assert "too_few_slices" not in [r["reason"] for r in effective_rules(sel)]
