"""`digitd evaluate --set DIR`: a real folder of PNGs and labels.csv, the shipped model, the
daemon's intake; bad rows are reported with their line and never stop the run."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from digitd import ctc
from digitd.cli import main
from digitd.model import default_model_path, file_sha256

SAMPLE = Path(__file__).parent / "data" / "mnist_sample.npz"


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """40 MNIST test digits as dark-on-white PNGs, one blank page, and some bad rows."""
    folder = tmp_path_factory.mktemp("set")
    with np.load(SAMPLE) as npz:
        x, y = npz["x_test"][:40], npz["y_test"][:40]
    lines = ["file,label"]
    for i, (img, label) in enumerate(zip(x, y, strict=True)):
        page = cv2.copyMakeBorder(255 - img, 10, 10, 10, 10, cv2.BORDER_CONSTANT, value=255)
        cv2.imwrite(str(folder / f"d{i:02d}.png"), page)
        lines.append(f"d{i:02d}.png,{label}")
    cv2.imwrite(str(folder / "blank.png"), np.full((40, 40), 255, np.uint8))
    lines += [
        "blank.png,3",  # line 42: the daemon rejects it (no_ink): counted, not a bad row
        "gone.png,1",  # 43: missing
        "d00.png,x",  # 44: not a digit
        "d01.png,1a",  # 45: not digits
        "d02.png,1,extra",  # 46: three fields
        "d03.png,5",  # 47: listed again
        "../outside.png,1",  # 48: outside the folder
    ]
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    return folder, y


def test_json_figures_and_bad_rows(labelled, capsys):
    folder, y = labelled
    assert main(["evaluate", "--set", str(folder), "--json", "--min-confidence", "0.8"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    r = json.loads(out[0])
    assert r["n"] == 41 and r["min_confidence"] == 0.8
    assert r["min_confidence_from"] == "--min-confidence"
    assert [(b["line"], b["file"]) for b in r["bad_rows"]] == [
        (43, "gone.png"), (44, "d00.png"), (45, "d01.png"), (46, "d02.png"), (47, "d03.png"),
        (48, "../outside.png")]
    assert "missing" in r["bad_rows"][0]["reason"]
    assert "first on line 5" in r["bad_rows"][4]["reason"]
    assert r["rejected_reasons"] == {"no_ink": 1} and r["counts"]["rejected"] == 1
    matrix = np.array(r["confusion_matrix"])
    assert matrix.shape == (10, 11) and matrix.sum() == 41 and matrix[3, 10] == 1
    assert r["accuracy"] == pytest.approx(np.trace(matrix[:, :10]) / 41)
    assert r["accuracy"] >= 38 / 41  # the shipped model on clean MNIST digits
    c = r["counts"]
    assert c["ok"] + c["low_confidence"] + c["rejected"] == 41
    assert r["silent_errors"] == pytest.approx(c["ok_wrong"] / 41)
    assert r["review_share"] == pytest.approx(c["low_confidence"] / 41)
    assert set(r["per_class_accuracy"]) <= {str(d) for d in range(10)}


def test_threshold_changes_review_not_accuracy(labelled, capsys):
    folder, _ = labelled
    main(["evaluate", "--set", str(folder), "--json", "--min-confidence", "0"])
    low = json.loads(capsys.readouterr().out)
    main(["evaluate", "--set", str(folder), "--json", "--min-confidence", "1"])
    high = json.loads(capsys.readouterr().out)
    assert low["review_share"] == 0 and high["silent_errors"] == 0
    assert high["review_share"] > 0.5 and low["accuracy"] == high["accuracy"]


def test_threshold_from_config(labelled, tmp_path, capsys):
    folder, _ = labelled
    config = tmp_path / "c.yaml"
    config.write_text("min_confidence: 0.55\n")
    assert main(["evaluate", "--set", str(folder), "--json", "--config", str(config)]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["min_confidence"] == 0.55 and r["min_confidence_from"] == str(config)


def test_human_readable(labelled, capsys):
    folder, _ = labelled
    assert main(["evaluate", "--set", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "silent errors" in out and "review share" in out and "confusion" in out
    assert "bad row: line 43: gone.png: missing" in out


def test_usage_errors_are_exit_2(tmp_path, capsys):
    assert main(["evaluate", "--set", str(tmp_path)]) == 2
    assert "labels.csv" in capsys.readouterr().err
    (tmp_path / "labels.csv").write_text("file,label\n")
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "--set", str(tmp_path), "--min-confidence", "2"])
    assert exit_.value.code == 2 and "0 to 1" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("min_confidence: 7\n")
    assert main(["evaluate", "--set", str(tmp_path), "--config", str(bad)]) == 2


def test_number_labels(tmp_path, capsys):
    """Labels may be numbers: with --recognise auto each is read as a string, as the daemon
    would, and counted apart (`numbers`) as well as in the whole set's figures; the single
    digits keep their confusion matrix. With digit every number is read as one digit (all
    wrong), and the command says so."""
    import number_scans

    with np.load(SAMPLE) as npz:
        x, y = npz["x_test"], npz["y_test"]
    lines = ["file,label"]
    for i in range(6):
        data, truth, _ = number_scans.render_number(x, y, i, seed=11, flavour="paper_grey",
                                                    decorations=())
        (tmp_path / f"n{i}.png").write_bytes(data)
        lines.append(f"n{i}.png,{truth}")
    for i in range(4):
        page = cv2.copyMakeBorder(255 - x[i], 10, 10, 10, 10, cv2.BORDER_CONSTANT, value=255)
        cv2.imwrite(str(tmp_path / f"d{i}.png"), page)
        lines.append(f"d{i}.png,{y[i]}")
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")

    assert main(["evaluate", "--set", str(tmp_path), "--json", "--recognise", "auto"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["n"] == 10 and r["bad_rows"] == [] and r["recognise"] == "auto"
    assert len(r["number_model"]) == 64
    numbers = r["numbers"]
    assert numbers["n"] == 6 and numbers["accuracy"] >= 4 / 6
    matrix = np.array(r["confusion_matrix"])
    assert matrix.sum() + r["read_as_number"] == 4
    right = numbers["accuracy"] * 6 + np.trace(matrix[:, :10])
    assert r["accuracy"] == pytest.approx(right / 10)

    assert main(["evaluate", "--set", str(tmp_path), "--recognise", "digit"]) == 0
    out = capsys.readouterr()
    assert "recognise is digit" in out.err
    assert "numbers        6 rows: accuracy 0.00%" in out.out
    assert "confusion" in out.out  # the single digits'

    # --number-model: another number model reads the numbers (the shipped second, alone);
    # one that cannot be loaded is a usage error, never segmentation alone without a word
    other = ctc.default_path().parent / ctc.SECOND_NAME
    assert main(["evaluate", "--set", str(tmp_path), "--json", "--number-model",
                 str(other)]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["number_model"] == file_sha256(other) and r["second_number_model"] is None
    assert r["numbers"]["n"] == 6 and r["numbers"]["accuracy"] >= 4 / 6
    assert main(["evaluate", "--set", str(tmp_path), "--number-model",
                 str(tmp_path / "none.keras")]) == 2
    assert "cannot load the number model" in capsys.readouterr().err
    assert main(["evaluate", "--set", str(tmp_path), "--number-model",
                 str(default_model_path())]) == 2  # the digit model, given for numbers
    assert "not a number model" in capsys.readouterr().err
    assert main(["evaluate", "--set", str(tmp_path), "--model", str(other)]) == 2
    assert "a number model, not a digit model" in capsys.readouterr().err


def test_a_set_of_numbers_only_has_no_confusion_matrix(tmp_path, capsys):
    import number_scans

    with np.load(SAMPLE) as npz:
        x, y = npz["x_test"], npz["y_test"]
    data, truth, _ = number_scans.render_number(x, y, 0, seed=11, flavour="paper_grey",
                                                decorations=())
    (tmp_path / "n.png").write_bytes(data)
    (tmp_path / "labels.csv").write_text(f"n.png,{truth}\n")
    assert main(["evaluate", "--set", str(tmp_path), "--recognise", "number"]) == 0
    out = capsys.readouterr().out
    assert "numbers        1 rows" in out and "confusion" not in out
