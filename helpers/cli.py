"""``python -m helpers``: headless training and the project's small tools, on the same code as the notebook."""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from .config import AMPS, AUGMENTS, DICE_OVER, INTENSITIES, LOSSES, NORMS, OPTIMIZERS, SCHEDULES, Config
from .data import DataError
from .train import TrainingError


def _features(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 16,32,64,128, got {text!r}")
    if not widths or min(widths) < 1:
        raise argparse.ArgumentTypeError(f"widths must be positive integers, got {text!r}")
    return widths


def _share_or_none(text: str) -> float | None:
    if text.lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1 or 'none', got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m helpers", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train the U-Net and write a run folder")
    train.add_argument("--data-dir", help="a kaggle_3m folder (default: find one, else synthetic tiles)")
    train.add_argument("--out", default=Config.run_dir, help="run folder (default: %(default)s)")
    train.add_argument("--resume", metavar="RUN", help="go on with the run in RUN from its last.pt (its own "
                       "settings; other flags but --data-dir and --quiet are ignored)")
    train.add_argument("--epochs", type=int)
    train.add_argument("--image-size", type=int)
    train.add_argument("--crop", type=int, help="train on random windows of this many px of each slice; "
                       "0 = whole slices (default: 3/4 of the image size on a CPU with real data, else 0)")
    train.add_argument("--crop-on-tumour", type=float, help="share of tumour slices whose window is placed to hold "
                       "some tumour (default: 1 on a CPU with real data and windows, else 0)")
    train.add_argument("--features", type=_features, help="U-Net widths, e.g. 16,32,64,128")
    train.add_argument("--context", type=int, default=Config.context,
                       help="neighbouring slices on each side as extra input channels (2.5-D); 0 = one slice")
    train.add_argument("--norm", choices=NORMS, default=Config.norm,
                       help="normalisation layers: batch (the seed's) or instance (per slice)")
    train.add_argument("--dropout", type=float, default=Config.dropout,
                       help="dropout on the bottleneck's features in training (the U-Net paper: 0.5); 0 = off")
    train.add_argument("--deep-supervision", action=argparse.BooleanOptionalAction, default=Config.deep_supervision,
                       help="add the loss of 1/2- and 1/4-scale outputs of the decoder in training (nnU-Net's)")
    train.add_argument("--ensemble", type=int, help="U-Nets trained side by side from their own initial weights, "
                       "probabilities averaged (default: 2 on CPU with real data, else 1)")
    train.add_argument("--batch-size", type=int)
    train.add_argument("--accumulate", type=int, default=Config.accumulate,
                       help="micro-batches per batch, gradients added up (less memory)")
    train.add_argument("--lr", type=float)
    train.add_argument("--loss", choices=LOSSES, default=Config.loss)
    train.add_argument("--dice-weight", type=float, default=Config.dice_weight,
                       help="weight of the Dice term in bce_dice (the rest is BCE)")
    train.add_argument("--dice-over", choices=DICE_OVER, default=Config.dice_over,
                       help="count the Dice term over the whole batch, or per slice with tumour "
                            "(small tumours weigh more)")
    train.add_argument("--recall-weight", type=float, default=Config.recall_weight,
                       help="Dice term as a Tversky index: over 0.5, missed tumour costs more than false alarms")
    train.add_argument("--ema", type=float, default=Config.ema,
                       help="validate and save a moving average of the weights with this decay per step (e.g. 0.99)")
    train.add_argument("--optimizer", choices=OPTIMIZERS, default=Config.optimizer)
    train.add_argument("--weight-decay", type=float, default=Config.weight_decay)
    train.add_argument("--schedule", choices=SCHEDULES, default=Config.schedule)
    train.add_argument("--tumour-mix", type=float, default=Config.tumour_mix,
                       help="share of training slices given another training slice's tumour (CarveMix); 0 = off")
    train.add_argument("--tumour-share", type=_share_or_none, default=Config.tumour_share,
                       help="share of tumour slices drawn per epoch; none = as in the data")
    train.add_argument("--tta", action=argparse.BooleanOptionalAction, default=Config.tta,
                       help="flip test-time augmentation")
    train.add_argument("--tune-threshold", action=argparse.BooleanOptionalAction, default=Config.tune_threshold,
                       help="choose the threshold on the validation patients")
    train.add_argument("--intensity", choices=INTENSITIES, default=Config.intensity,
                       help="per patient and channel: 'landmarks' maps the brain median and 99th percentile to "
                            "fixed levels, 'volume' the 99th percentile alone, 'brain' the median alone; 'dataset': "
                            "one normalisation for all")
    train.add_argument("--min-component", type=int, default=Config.min_component,
                       help="drop predicted 2-D blobs smaller than this many pixels")
    train.add_argument("--grow-threshold", type=float, default=Config.grow_threshold,
                       help="grow found tumour into the 3-D regions above this lower probability (0 = off)")
    train.add_argument("--min-volume-share", type=float, default=Config.min_volume_share,
                       help="keep only 3-D regions with at least this share of the largest region's voxels")
    train.add_argument("--fill-holes", action=argparse.BooleanOptionalAction, default=Config.fill_holes,
                       help="fill holes inside each slice's predicted tumour")
    train.add_argument("--val-fraction", type=float, default=Config.val_fraction)
    train.add_argument("--time-budget", type=float, help="seconds of training; stops cleanly, keeps best.pt")
    train.add_argument("--patience", type=int, help="stop after N epochs without a better validation Dice")
    train.add_argument("--select-after", type=float, default=Config.select_after,
                       help="cosine schedule: only epochs after this share of the run can become best.pt")
    train.add_argument("--seed", type=int, default=Config.seed)
    train.add_argument("--workers", type=int)
    train.add_argument("--device", default=Config.device, help="auto, cpu, cuda, cuda:1 ...")
    train.add_argument("--amp", choices=AMPS, default=Config.amp,
                       help="mixed precision; auto = bf16/fp16 where the GPU or CPU runs it natively")
    train.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=Config.channels_last,
                       help="NHWC memory layout for convolutions")
    train.add_argument("--compile", action=argparse.BooleanOptionalAction, default=Config.compile,
                       help="torch.compile the model")
    train.add_argument("--cache", action=argparse.BooleanOptionalAction, default=Config.cache,
                       help="decode every slice once into RAM")
    train.add_argument("--augment", choices=AUGMENTS, default=Config.augment,
                       help="augmentation policy: light (flips, small affine), strong (+ gamma, noise, blur), off")
    train.add_argument("--intensity-jitter", type=float, default=Config.intensity_jitter,
                       help="brightness/contrast augmentation strength")
    train.add_argument("--channel-gain", type=float, default=Config.channel_gain,
                       help="per-channel gain augmentation: factors in [1-g, 1+g]")
    train.add_argument("--channel-gamma", type=float, default=Config.channel_gamma,
                       help="per-channel gamma augmentation: gammas in [1/(1+g), 1+g]")
    train.add_argument("--sequence-dropout", type=float, default=Config.sequence_dropout,
                       help="share of training slices with one MR sequence blanked to its mean")
    train.add_argument("--bias-field", type=float, default=Config.bias_field,
                       help="smooth random gain field per MR sequence (MRI bias field): gains within exp(+-b)")
    train.add_argument("--elastic", type=float, default=Config.elastic,
                       help="share of training slices given a smooth random (elastic) deformation")
    train.add_argument("--quiet", action="store_true", help="no progress bars")

    evaluate = commands.add_parser("evaluate", help="score a checkpoint on every labelled patient under a folder")
    evaluate.add_argument("--checkpoint", required=True, help="RUN/best.pt")
    evaluate.add_argument("--data-dir", required=True, help="a kaggle_3m folder with masks")
    evaluate.add_argument("--report", default="report.json", help="JSON file to write (default: %(default)s)")
    evaluate.add_argument("--device", default=Config.device)

    predict = commands.add_parser("predict", help="masks, overlays and a per-patient summary for new scans")
    predict.add_argument("--checkpoint", required=True, help="RUN/best.pt")
    predict.add_argument("--input", required=True, help="a slice (.tif/.png), a patient folder, or a kaggle_3m "
                         "folder; masks are not needed")
    predict.add_argument("--out", required=True, help="folder for the masks, overlays and summary.csv")
    predict.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                         help="flip test-time augmentation (default: as the checkpoint)")
    predict.add_argument("--threshold", type=float, help="default: the checkpoint's")
    predict.add_argument("--min-component", type=int, help="drop predicted 2-D blobs under N pixels")
    predict.add_argument("--min-volume-share", type=float, help="keep 3-D regions over this share of the largest")
    predict.add_argument("--grow-threshold", type=float, help="grow found tumour down to this probability (0 = off)")
    predict.add_argument("--fill-holes", action=argparse.BooleanOptionalAction, default=None,
                         help="fill holes inside each slice's predicted tumour (default: the checkpoint's)")
    predict.add_argument("--strict", action="store_true", help="stop at the first unusable slice (default: skip "
                         "it with a warning and list it in skipped.csv)")
    predict.add_argument("--volume-view", action=argparse.BooleanOptionalAction, default=True,
                         help="a grid PNG and an animated GIF per patient")
    predict.add_argument("--device", default=Config.device)
    predict.add_argument("--quiet", action="store_true", help="no progress bar")

    export = commands.add_parser("export", help="TorchScript and ONNX files of a checkpoint, checked against it")
    export.add_argument("--checkpoint", required=True, help="RUN/best.pt")
    export.add_argument("--out", required=True, help="folder for model.onnx, model.torchscript.pt and "
                        "preprocessing.json")
    export.add_argument("--format", nargs="+", choices=("torchscript", "onnx"), default=["torchscript", "onnx"])

    synth = commands.add_parser("synth", help="write synthetic tiles in the kaggle_3m layout")
    synth.add_argument("--out", required=True, help="folder to create kaggle_3m/ in")
    synth.add_argument("--patients", type=int, default=Config.synthetic_patients)
    synth.add_argument("--slices", type=int, default=Config.synthetic_slices)
    synth.add_argument("--seed", type=int, default=0)

    bench = commands.add_parser("bench", help="measure peak, model-step and end-to-end training speed")
    bench.add_argument("--data-dir", help="a kaggle_3m folder to load from (default: synthetic tiles)")
    bench.add_argument("--json", help="also write the figures to this JSON file")
    bench.add_argument("--steps", type=int, default=10, help="timed training steps per measurement")
    bench.add_argument("--image-size", type=int)
    bench.add_argument("--features", type=_features)
    bench.add_argument("--batch-size", type=int)
    bench.add_argument("--workers", type=int)
    bench.add_argument("--device", default=Config.device)
    bench.add_argument("--amp", choices=AMPS, default=Config.amp)
    bench.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=Config.channels_last)
    bench.add_argument("--ensemble", type=int, help="U-Nets trained per step (default: as train picks)")
    bench.add_argument("--seed-unet", action=argparse.BooleanOptionalAction, default=True,
                       help="also time the seed's U-Net (widths 64..512, 256 px)")

    diagram = commands.add_parser("diagram", help="draw the U-Net diagram (unet.png)")
    diagram.add_argument("--out", default="unet.png")
    diagram.add_argument("--features", type=_features, help="U-Net widths (default: the seed's)")
    return parser


def _train(args: argparse.Namespace) -> None:
    from . import distributed
    from .data import load_dataset
    from .source import resolve_data
    from .train import resume_run, train_run

    # Every train flag is named after the Config field it sets (dashes for underscores), except --out; the
    # flags' defaults are Config's own.
    knobs = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config) if hasattr(args, f.name)}
    cfg = Config(**knobs, run_dir=args.out)
    procs, cfg = distributed.setup(cfg)  # under torchrun: join the job first
    try:
        if args.resume:
            result = resume_run(args.resume, args.data_dir, progress=not args.quiet)
        else:
            # The main process finds (or downloads, or writes) the data; the others use what it found.
            path = distributed.from_main(resolve_data(cfg).path if procs.main else None, procs)
            result = train_run(cfg, load_dataset(path), progress=not args.quiet)
        if procs.main:
            print(f"best epoch {result.best_epoch}: validation Dice {result.best_val_dice:.3f} -> "
                  f"{result.run_dir}/best.pt")
        # Leave the group together: tearing it down while another process still has the last broadcast in flight
        # can abort (gloo; the torchrun CLI test aborted once at exit). Only on success: after an error the others
        # may never arrive.
        distributed.barrier(procs)
    finally:
        distributed.teardown()


def _evaluate(args: argparse.Namespace) -> None:
    import json

    from .data import load_dataset
    from .inference import report

    model, cfg, info = _load(args.checkpoint, args.device)
    table = load_dataset(args.data_dir)
    scores = report(model, table, cfg)
    scores.update(checkpoint=str(args.checkpoint), data_dir=str(args.data_dir), threshold=cfg.threshold,
                  epoch=info.get("epoch"))
    Path(args.report).parent.mkdir(parents=True, exist_ok=True)
    Path(args.report).write_text(json.dumps(scores, indent=2) + "\n")
    print(f"{scores['n_patients']} patients / {scores['n_slices']} slices: mean patient Dice "
          f"{scores['mean_patient_dice']:.3f}, median {scores['median_patient_dice']:.3f}, "
          f"tumour-slice Dice {scores['tumour_slice_dice']:.3f} -> {args.report}")


def _load(checkpoint: str, device: str):
    from .checkpoint import load_checkpoint

    device = Config(device=device).torch_device()
    model, cfg, info = load_checkpoint(checkpoint, device)
    return model, dataclasses.replace(cfg, device=str(device), workers=0 if device.type == "cpu" else cfg.workers), info


def _predict(args: argparse.Namespace) -> None:
    from .predict import predict

    model, cfg, _ = _load(args.checkpoint, args.device)
    changes = {"tta": args.tta, "threshold": args.threshold, "min_component": args.min_component,
               "min_volume_share": args.min_volume_share, "grow_threshold": args.grow_threshold,
               "fill_holes": args.fill_holes}
    cfg = dataclasses.replace(cfg, **{k: v for k, v in changes.items() if v is not None})
    result = predict(model, cfg, args.input, args.out, strict=args.strict, volume_view=args.volume_view,
                     progress=not args.quiet)
    with_tumour = int((result.summary["slices_with_tumour"] > 0).sum())
    print(f"{len(result.summary)} patient(s), {len(result.slices)} slices, tumour predicted in {with_tumour} "
          f"patient(s); {len(result.skipped)} slices skipped -> {result.out_dir}/summary.csv")
    print(f"{result.slices_per_second:.1f} slices/s end to end ({result.seconds:.1f} s), "
          f"{len(result.slices) / max(result.model_seconds, 1e-9):.1f} slices/s in the model")


def _export(args: argparse.Namespace) -> None:
    from .export import export

    model, cfg, _ = _load(args.checkpoint, "cpu")
    for name, check in export(model, cfg, args.out, tuple(args.format)).items():
        print(f"{name}: {check['path']} (max abs difference from PyTorch {check['max_abs_diff']:.2e})")


def _bench(args: argparse.Namespace) -> None:
    import json

    from .bench import format_table, run

    cfg = Config(image_size=args.image_size, features=args.features, batch_size=args.batch_size,
                 workers=args.workers, device=args.device, amp=args.amp, channels_last=args.channels_last,
                 ensemble=args.ensemble)
    result = run(cfg, args.data_dir, steps=args.steps, seed_unet=args.seed_unet)
    print(format_table(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"-> {args.json}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            _train(args)
        elif args.command == "evaluate":
            _evaluate(args)
        elif args.command == "predict":
            _predict(args)
        elif args.command == "export":
            _export(args)
        elif args.command == "bench":
            _bench(args)
        elif args.command == "synth":
            from .synthetic import write_synthetic_dataset
            print(write_synthetic_dataset(args.out, args.patients, args.slices, args.seed))
        elif args.command == "diagram":
            import matplotlib
            matplotlib.use("Agg")
            from .diagram import save_unet_diagram
            from .model import SEED_FEATURES, UNet
            print(save_unet_diagram(Path(args.out), UNet(features=args.features or SEED_FEATURES)))
    except (DataError, FileNotFoundError, ValueError, TrainingError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
