"""Command line: `digitd run|check-config|predict|train|export|review|evaluate`.

Only argparse and the standard library are imported here; each command imports its own
module (and, for train and export, TensorFlow) when it runs, so `digitd --help` stays instant.
"""

from __future__ import annotations

import argparse
import sys
from importlib import import_module
from importlib.util import find_spec

from digitd import __version__
from digitd.codes import ExitCode


def _command(module: str, function: str, needs_tensorflow: bool = False):
    """Return a handler that imports `digitd.<module>` only when the command runs.

    TensorFlow is an optional extra (`pip install 'digitd[train]'`); a command that needs it
    says so plainly (exit 2) when it is missing.
    """

    def handler(args: argparse.Namespace) -> int:
        if needs_tensorflow and find_spec("tensorflow") is None:
            print(f"digitd {args.command}: needs TensorFlow, which is not installed; install "
                  "the training extra: pip install 'digitd[train]'", file=sys.stderr)
            return ExitCode.USAGE
        return getattr(import_module(f"digitd.{module}"), function)(args)

    return handler


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a number from 0 to 1, got {text!r}")
    return value


def _train(args: argparse.Namespace) -> int:
    """`digitd train`: from scratch, or (--corrections) fine-tuning in digitd.finetune (with
    --arch numbers, the number models in digitd.finetune_numbers)."""
    if args.corrections and args.arch == "numbers":
        return _command("finetune_numbers", "fine_tune_numbers_command",
                        needs_tensorflow=True)(args)
    if args.corrections:
        return _command("finetune", "fine_tune_command", needs_tensorflow=True)(args)
    if args.base or args.steps:
        print("digitd train: --base and --steps need --corrections", file=sys.stderr)
        return ExitCode.USAGE
    if args.arch == "numbers":
        return _command("train_numbers", "train_numbers_command", needs_tensorflow=True)(args)
    if args.second:
        print("digitd train: --second needs --arch numbers (the digit model's second opinion "
              "is --second-epochs)", file=sys.stderr)
        return ExitCode.USAGE
    return _command("train", "train_command", needs_tensorflow=True)(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="digitd",
        description="Recognise handwritten digits in PNG files dropped into a folder.",
    )
    parser.add_argument("--version", action="version", version=f"digitd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser("run", help="watch the inbox and recognise every PNG dropped there")
    run.add_argument("--config", metavar="PATH", help="YAML configuration (default: built in)")
    run.add_argument("--inbox", metavar="DIR", help="override the configured inbox")
    run.add_argument("--outbox", metavar="DIR", help="override the configured outbox")
    run.add_argument("--worker", metavar="I/N", help=argparse.SUPPRESS)  # set by the supervisor
    run.set_defaults(handler=_command("run", "run_command"))

    check = sub.add_parser("check-config", help="validate a configuration file and exit")
    check.add_argument("--config", metavar="PATH", help="YAML configuration (default: built in)")
    check.set_defaults(handler=_command("config", "check_command"))

    predict = sub.add_parser("predict", help="recognise the digit in each FILE")
    predict.add_argument("files", nargs="+", metavar="FILE")
    predict.add_argument("--config", metavar="PATH",
                         help="the daemon's YAML configuration: its min_confidence, model and "
                         "max_pixels (default: built in)")
    predict.add_argument("--model", metavar="PATH",
                         help="a .keras model, served through its .tflite (default: the "
                         "configured one, else shipped)")
    predict.add_argument("--number-model", metavar="PATH",
                         help="a digitd-numbers.keras (digitd train --arch numbers) for numbers "
                         "(default: the configured one, else shipped)")
    predict.add_argument("--min-confidence", type=_probability, metavar="P",
                         help="below this a result is low_confidence (default: configured)")
    predict.add_argument("--recognise", choices=("auto", "digit", "number"),
                         help="one digit per image, a number (digits side by side), or auto "
                         "(default: configured)")
    predict.add_argument("--json", action="store_true", help="one JSON object per file")
    predict.add_argument("--preview", metavar="DIR", help="write annotated previews into DIR")
    predict.set_defaults(handler=_command("predict", "predict_command"))

    train = sub.add_parser("train", help="train a model on MNIST (and USPS) (one-shot)")
    train.add_argument("--data", metavar="DIR", help="MNIST IDX files or mnist.npz")
    train.add_argument(
        "--usps",
        metavar="PATH",
        help="USPS zip.train.gz (or its folder): train on its train part, calibrate on its "
        "calibration part, measure the operating point (digitd.dataset's shared split); with "
        "--corrections: refit the temperature on its calibration part too; with --arch "
        "numbers: write a share of the training strings with its train part's digits",
    )
    train.add_argument("--arch", choices=("cnn", "mlp", "numbers"), default="cnn",
                       help="numbers: the number reader (CTC) on strings of MNIST (and USPS) "
                            "digits")
    train.add_argument("--epochs", type=int,
                       help="default: 3 for mlp, the tuned value for cnn and numbers")
    train.add_argument("--second-epochs", type=int, metavar="N",
                       help="cnn: epochs of the second opinion, trained first on MNIST only "
                       "(default: the tuned value; 0: none)")
    train.add_argument("--second", action="store_true",
                       help="numbers: train the second number model for the one in --out "
                       "(written beside it as digitd-numbers.second.keras and named in its "
                       "card; give it another --seed, and --usps)")
    train.add_argument("--seed", type=int, default=1)
    train.add_argument("--out", metavar="DIR", default="models")
    train.add_argument("--limit", type=int, metavar="N", help="train on the first N digits only "
                       "(--arch numbers: on N strings)")
    train.add_argument(
        "--no-verify",
        action="store_true",
        help="skip the SHA-256 check (custom data under the official file names)",
    )
    train.add_argument("--corrections", metavar="DIR", action="append",
                       help="fine-tune on the reviewers' corrections in this outbox (repeatable):"
                       " of single digits, or with --arch numbers of numbers")
    train.add_argument("--base", metavar="MODEL", help="with --corrections: the model to "
                       "fine-tune (default: shipped; with --arch numbers a "
                       "digitd-numbers.keras, its second too)")
    train.add_argument("--steps", type=int, metavar="N", help="with --corrections: batches to "
                       "train (default: from the number of corrections)")
    train.set_defaults(handler=_train)

    export = sub.add_parser(
        "export", help="convert a .keras model to the .tflite that serving runs, check parity")
    export.add_argument("model", metavar="MODEL.keras")
    export.add_argument("--data", metavar="DIR", help="MNIST IDX files or mnist.npz (parity)")
    export.add_argument("--precision", choices=("float32", "int8"), help="the .tflite's "
                        "weights (default: int8, float32 if int8 fails the parity check)")
    export.add_argument("--usps", metavar="DIR", help="USPS files: choose the operating point "
                        "again on the answers as served (digitd train does)")
    export.add_argument("--no-verify", action="store_true", help="skip the SHA-256 check")
    export.set_defaults(handler=_command("export", "export_command", needs_tensorflow=True))

    review = sub.add_parser("review", help="the review page: confirm or correct unsure results")
    review.add_argument("--config", metavar="PATH", help="YAML configuration (default: built in)")
    review.add_argument("--outbox", metavar="DIR", help="override the configured outbox")
    review.add_argument("--listen", metavar="HOST:PORT", help="default: review.listen")
    review.add_argument("--reviewer", metavar="NAME", help="name written with each verdict")
    review.set_defaults(handler=_command("review.app", "review_command"))

    evaluate = sub.add_parser(
        "evaluate", help="measure a model on a labelled folder of PNGs or on the MNIST test set"
    )
    evaluate.add_argument("--model", metavar="PATH", help="a .keras model (default: shipped)")
    evaluate.add_argument(
        "--set",
        metavar="DIR",
        help="PNGs plus labels.csv (file,label), through the daemon's intake and preprocessing",
    )
    evaluate.add_argument("--number-model", metavar="PATH",
                          help="with --set: a digitd-numbers.keras for numbers (default: the "
                          "configured one, else shipped)")
    evaluate.add_argument("--config", metavar="PATH", help="min_confidence (and model) from here")
    evaluate.add_argument(
        "--min-confidence", type=_probability, metavar="P",
        help="below this a result is low_confidence (default: configured)",
    )
    evaluate.add_argument("--recognise", choices=("auto", "digit", "number"),
                          help="with --set: one digit per image, a number, or auto (default: "
                          "configured); labels may be numbers")
    evaluate.add_argument("--data", metavar="DIR", help="MNIST IDX files or mnist.npz")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.add_argument("--no-verify", action="store_true", help="skip the SHA-256 check")
    evaluate.set_defaults(handler=_command("evaluate", "evaluate_command"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
