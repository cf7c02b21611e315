"""Class-conditional generation and colorization on the 8x8 digits, with the project's commands.

Makes the figures and numbers of ``docs/conditional/``:

1. classifier guidance: the digits demo model (``scoresde demo``, sub-VP) and a noise-conditional
   classifier (``scoresde train-classifier --preset digits_subvp``), sampled with
   ``scoresde sample --classifier ... --class all --guidance W``;
2. classifier-free guidance: a label-conditional model trained with label dropout
   (``scoresde train ... --set model.num_classes=10 --set train.label_dropout=0.1``), sampled
   with ``--class all --guidance W``;
3. the noise-conditional classifier's test accuracy against t (its ``accuracy.json``);
4. colorization: an RGB model trained on the digits tinted with a random hue each (written as
   8x8 PNG files, ``data.dataset=folder``), and ``scoresde colorize`` of 8 tinted test digits;
5. ``report.json`` with every number.

Every command runs as ``python -m scoresde ... --no-progress``; the JSON line it prints is kept
in ``WORK/records/<step>.json``, and a step with a record is not run again, so an interrupted
run resumes where it stopped (training resumes from its rolling checkpoint). Run from the
repository root:

    python benchmarks/conditional_digits.py                      # ~90 min on 2 busy CPU cores
    python benchmarks/conditional_digits.py --quick --work /tmp/cdq --docs /tmp/cdq_docs

The time goes to sampling: 500 digits (10 classes x 50) with the preset's 1000-step PC sampler
took 14-19 min each on the shared 2-core machine, against 5-9 min for each training run.
"""

from __future__ import annotations

import argparse
import colorsys
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

CLASSIFIER_SCALES = (1.0, 4.0)
CFG_SCALES = (1.0, 3.0)
NUM_COLORIZED = 8

FULL = {"demo": 1800, "classifier": 2000, "conditional": 1800, "rgb": 1800, "sample": None}
QUICK = {"demo": 30, "classifier": 30, "conditional": 30, "rgb": 30, "sample": 20}
"""Training steps of each run, and PC steps of the samplers (``None``: the preset's, 1000)."""


def scale_name(w: float) -> str:
    return f"{w:g}".replace(".", "p")


class Runner:
    """Runs ``python -m scoresde`` commands, each once: its record is its done-marker."""

    def __init__(self, work: Path):
        self.work = work
        self.records = work / "records"
        self.records.mkdir(parents=True, exist_ok=True)

    def record_path(self, name: str) -> Path:
        return self.records / f"{name}.json"

    def load(self, name: str) -> dict[str, Any] | None:
        path = self.record_path(name)
        return json.loads(path.read_text()) if path.is_file() else None

    def save(self, name: str, record: dict[str, Any]) -> dict[str, Any]:
        path = self.record_path(name)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        tmp.replace(path)
        return record

    def run(self, name: str, args: list[str], *, result_file: Path | None = None) -> dict:
        """Run ``scoresde ARGS --no-progress`` unless ``name`` has a record; return the record
        ``{"command", "seconds", "output"}``. ``output`` is the last JSON line of stdout, or
        the JSON file ``result_file`` (the demo prints its report over several lines)."""
        record = self.load(name)
        if record is not None:
            print(f"[{name}] done before ({record['seconds']:.0f} s), skipped", flush=True)
            return record
        command = [sys.executable, "-m", "scoresde", *args, "--no-progress"]
        print(f"[{name}] {' '.join(command[1:])}", flush=True)
        start = time.perf_counter()
        proc = subprocess.run(command, stdout=subprocess.PIPE, text=True)
        seconds = time.perf_counter() - start
        sys.stdout.write(proc.stdout)
        if proc.returncode != 0:
            raise SystemExit(f"[{name}] failed with status {proc.returncode}: {' '.join(args)}")
        output = json.loads(result_file.read_text()) if result_file else last_json_line(proc.stdout)
        print(f"[{name}] {seconds:.0f} s", flush=True)
        return self.save(
            name, {"command": ["scoresde", *args], "seconds": round(seconds, 2), "output": output}
        )


def last_json_line(text: str) -> dict[str, Any]:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    raise SystemExit(f"no JSON line in the command's output:\n{text}")


def sample_args(checkpoint: Path, out: Path, per_class: int, w: float, steps: int | None):
    args = ["sample", "--checkpoint", str(checkpoint), "--class", "all"]
    args += ["--num-samples", str(per_class), "--guidance", f"{w:g}", "--out", str(out)]
    return args + (["--set", f"sample.num_steps={steps}"] if steps else [])


def run_sample(runner: Runner, name: str, args: list[str], out: Path) -> dict:
    """``scoresde sample``; samples left by a run whose record was lost are scored again with
    the same digits classifier rather than refused by ``sample`` (no ``--overwrite``)."""
    if runner.load(name) is None and (out / "config.json").is_file():
        from scoresde.jobs.evaluation.digits_classifier import conditional_accuracy

        samples = np.load(out / "samples.npy")
        labels = np.load(out / "labels.npy")
        import torch

        acc = conditional_accuracy(torch.from_numpy(samples), torch.from_numpy(labels))
        output = {"out": str(out), "digits_classifier_accuracy": acc, "recovered": True}
        print(f"[{name}] samples found in {out} without a record: scored again", flush=True)
        return runner.save(
            name, {"command": ["scoresde", *args], "seconds": None, "output": output}
        )
    return runner.run(name, args)


def real_digits_accuracy() -> dict[str, Any]:
    """The package's digits classifier on the real test digits: the ceiling for the samples."""
    from scoresde.jobs.evaluation.digits_classifier import conditional_accuracy
    from scoresde.setup.config import DataConfig
    from scoresde.setup.data.pipeline import load_labeled_split

    x, y = load_labeled_split(DataConfig(dataset="digits"), "test")
    return conditional_accuracy(x, y)


def write_tinted(root: Path, seed: int = 0) -> dict[str, Any]:
    """The digits tinted with a random saturated hue each, as 8-bit 8x8 RGB PNG files in
    ``root/train/`` and ``root/test/`` (the ``folder`` dataset's layout); ``root/done.json`` marks
    a finished folder."""
    from PIL import Image

    from scoresde.setup.config import DataConfig
    from scoresde.setup.data.pipeline import load_split

    done = root / "done.json"
    if done.is_file():
        return json.loads(done.read_text())
    rng = np.random.default_rng(seed)
    counts = {}
    for split in ("train", "test"):
        digits = load_split(DataConfig(dataset="digits"), split).numpy()  # (N, 1, 8, 8) in [0, 1]
        hues = rng.uniform(0.0, 1.0, size=digits.shape[0])
        colours = np.array([colorsys.hsv_to_rgb(h, 1.0, 1.0) for h in hues], dtype=np.float32)
        tinted = digits * colours[:, :, None, None]  # (N, 3, 8, 8)
        pixels = np.round(tinted * 255).clip(0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
        folder = root / split
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        for i, image in enumerate(pixels):
            Image.fromarray(image, mode="RGB").save(folder / f"{i:05d}.png")
        counts[split] = int(digits.shape[0])
    info = {"seed": seed, "images": counts, "levels": 256, "shape": [3, 8, 8]}
    done.write_text(json.dumps(info, indent=2) + "\n")
    return info


def read_pngs(folder: Path, n: int) -> np.ndarray:
    from PIL import Image

    files = sorted(folder.glob("*.png"))[:n]
    images = [np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255 for f in files]
    return np.stack(images).transpose(0, 3, 1, 2)  # (n, 3, 8, 8)


def plot_accuracy(accuracy: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.0), dpi=100)
    ax.plot(accuracy["times"], accuracy["accuracy"], "o-", label="noise-conditional classifier")
    ax.axhline(accuracy["chance"], color="grey", ls="--", label=f"chance ({accuracy['chance']:g})")
    ax.set_xlabel("t (sub-VP SDE)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"p_t(y | x(t)) on noisy test digits (n={accuracy['num_examples']})", fontsize=9)
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def colorization(runner: Runner, work: Path, docs: Path, steps: dict[str, Any]) -> dict:
    from scoresde.infra.viz import save_image_grid

    tinted = write_tinted(work / "tinted")
    rgb_args = ["train", "--preset", "digits_subvp", "--out", str(work / "rgb")]
    rgb_args += ["--steps", str(steps["rgb"]), "--set", "data.dataset=folder"]
    rgb_args += ["--set", f"data.root={work / 'tinted'}", "--set", "data.image_size=8"]
    rgb_args += ["--set", "data.levels=256"]
    rgb = runner.run("train_rgb", rgb_args)

    originals = read_pngs(work / "tinted" / "test", NUM_COLORIZED)
    npz = work / "colorize_input.npz"
    if not npz.is_file():
        np.savez(npz, images=originals)
    col_args = ["colorize", "--checkpoint", str(work / "rgb" / "checkpoint.safetensors")]
    col_args += ["--image", str(npz), "--out", str(work / "colorized")]
    col_args += ["--set", f"sample.num_steps={steps['sample']}"] if steps["sample"] else []
    col = runner.run("colorize", col_args)

    colorized = np.load(work / "colorized" / "colorized.npy")
    grey = originals.mean(axis=1, keepdims=True)
    diff = np.abs(colorized.mean(axis=1, keepdims=True) - grey)
    raw_path = work / "colorized_unclamped.npy"
    if not raw_path.is_file():
        np.save(raw_path, unclamped_colorization(work / "rgb", originals, steps["sample"]))
    raw = np.load(raw_path)
    raw_diff = np.abs(raw.mean(axis=1, keepdims=True) - grey)
    outside = ((raw < 0.0) | (raw > 1.0)).any(axis=1, keepdims=True)
    grid = np.concatenate([np.repeat(grey, 3, axis=1), colorized, originals])
    save_image_grid(grid, docs / "colorization.png", nrow=NUM_COLORIZED)
    return {
        "tinted_dataset": tinted,
        "train": rgb["output"],
        "train_seconds": rgb["seconds"],
        "colorize": col["output"],
        "colorize_seconds": col["seconds"],
        "num_images": int(originals.shape[0]),
        "grey_level_max_abs_diff": float(diff.max()),
        "grey_level_max_abs_diff_before_clamp": float(raw_diff.max()),
        "grey_level_max_abs_diff_pixels_inside_0_1": float(raw_diff[~outside].max())
        if (~outside).any()
        else None,
        "pixels_with_a_channel_outside_0_1": int(outside.sum()),
        "pixels": int(outside.size),
        "cli_vs_library_clamped_max_abs_diff": float(np.abs(raw.clip(0, 1) - colorized).max()),
        "note": "grey level = mean of the RGB channels, in [0, 1]. scoresde colorize clamps its "
        "output to [0, 1], which moves the mean where a channel leaves [0, 1]; 'before_clamp' is "
        "the same colorization (same seed and streams) through scoresde.methods.inverse.colorize, "
        "uncentred but not clamped",
    }


def unclamped_colorization(run_dir: Path, originals: np.ndarray, num_steps: int | None):
    """What ``scoresde colorize`` computes (:func:`scoresde.jobs.image_jobs.colorize_images`: same
    sampler, seed and per-image streams), mapped to ``[0, 1]`` scale without the final clamp."""
    from dataclasses import replace

    import torch

    from scoresde.core.seeding import SampleStreams
    from scoresde.core.transforms import uncenter
    from scoresde.jobs.runs import load_trained
    from scoresde.methods.inverse import colorize
    from scoresde.setup.build import sampler_config
    from scoresde.setup.data.pipeline import to_model_scale

    run = load_trained(run_dir / "checkpoint.safetensors", device="cpu")
    sc = run.cfg.sample if num_steps is None else replace(run.cfg.sample, num_steps=num_steps)
    method, options = sampler_config(sc, "pc")
    grey = torch.from_numpy(originals).mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
    streams = SampleStreams(run.cfg.seed, range(grey.shape[0]), device=run.device)
    y = to_model_scale(grey, replace(run.cfg.data, dequantize=False))
    with torch.no_grad():
        x = colorize(run.sde, run.score_fn, y, method=method, generator=streams, **options)
    return (uncenter(x) if run.cfg.data.centered else x).numpy()


def summarize_samples(record: dict[str, Any], w: float) -> dict[str, Any]:
    out = record["output"]
    keep = ("guidance", "method", "nfe", "pc_steps", "checkpoint_step", "classifier_step")
    return {
        "guidance": w,
        "digits_classifier_accuracy": out["digits_classifier_accuracy"],
        "seconds": record["seconds"],
        **{k: out[k] for k in keep if k in out and k != "guidance"},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("runs/conditional_digits"))
    p.add_argument("--docs", type=Path, default=Path("docs/conditional"))
    p.add_argument("--per-class", type=int, default=None, help="samples per class (50; quick 4)")
    p.add_argument("--quick", action="store_true", help="tiny step counts: a ~3 minute smoke run")
    for flag, scales, what in (
        ("--classifier-scales", CLASSIFIER_SCALES, "classifier-guidance scales W (1: eq. 14)"),
        ("--cfg-scales", CFG_SCALES, "classifier-free guidance scales W"),
    ):
        p.add_argument(flag, type=float, nargs="+", default=list(scales), help=what)
    a = p.parse_args()
    steps = QUICK if a.quick else FULL
    per_class = a.per_class or (4 if a.quick else 50)
    work, docs = a.work.resolve(), a.docs
    docs.mkdir(parents=True, exist_ok=True)
    runner = Runner(work)
    start = time.perf_counter()

    # 1. Classifier guidance of the unconditional demo model.
    demo_args = ["demo", "--out", str(work / "demo"), "--steps", str(steps["demo"])]
    if a.quick:
        demo_args += ["--set", f"sample.num_steps={steps['sample']}"]
        demo_args += ["--set", "eval.num_examples=16"]
    demo = runner.run("demo", demo_args, result_file=work / "demo" / "report.json")
    clf_args = ["train-classifier", "--preset", "digits_subvp", "--out", str(work / "classifier")]
    clf_args += ["--steps", str(steps["classifier"])] if a.quick else []
    clf = runner.run("train_classifier", clf_args)
    accuracy = json.loads((work / "classifier" / "accuracy.json").read_text())
    plot_accuracy(accuracy, docs / "classifier_accuracy.png")

    guided = {}
    for w in a.classifier_scales:
        out = work / f"guided_w{scale_name(w)}"
        args = sample_args(
            work / "demo" / "checkpoint.safetensors", out, per_class, w, steps["sample"]
        )
        args += ["--classifier", str(work / "classifier")]
        guided[f"{w:g}"] = summarize_samples(run_sample(runner, f"guided_w{w:g}", args, out), w)

    # 2. Classifier-free guidance of a label-conditional model.
    cond_args = ["train", "--preset", "digits_subvp", "--out", str(work / "conditional")]
    cond_args += ["--steps", str(steps["conditional"]), "--set", "model.num_classes=10"]
    cond_args += ["--set", "train.label_dropout=0.1"]
    cond = runner.run("train_conditional", cond_args)
    free = {}
    for w in a.cfg_scales:
        out = work / f"cfg_w{scale_name(w)}"
        args = sample_args(
            work / "conditional" / "checkpoint.safetensors", out, per_class, w, steps["sample"]
        )
        free[f"{w:g}"] = summarize_samples(run_sample(runner, f"cfg_w{w:g}", args, out), w)

    # Grids: W = 1 and the best other scale of each kind (by the digits classifier's mean).
    figures = []
    for kind, prefix, results in (
        ("classifier_guidance", "guided", guided),
        ("classifier_free", "cfg", free),
    ):
        others = [k for k in results if float(k) != 1.0]
        best = max(
            others, key=lambda k: results[k]["digits_classifier_accuracy"]["mean"], default=None
        )
        for key in dict.fromkeys([k for k in results if float(k) == 1.0] + [best]):
            if key is None:
                continue
            name = f"{kind}_w{scale_name(float(key))}.png"
            shutil.copyfile(
                work / f"{prefix}_w{scale_name(float(key))}" / "samples.png", docs / name
            )
            figures.append(name)

    # 4. Colorization with an RGB model of tinted digits.
    color = colorization(runner, work, docs, steps)
    figures += ["classifier_accuracy.png", "colorization.png"]

    report = {
        "quick": a.quick,
        "samples_per_class": per_class,
        "chance": 0.1,
        "sampler": "pc (reverse_diffusion + langevin, the preset's), "
        f"{steps['sample'] or 1000} steps",
        "digits_classifier_on_real_test_digits": real_digits_accuracy(),
        "classifier_guidance": {
            "score_model": {
                "run": "scoresde demo (digits_subvp)",
                "train_steps": demo["output"]["train_steps"],
                "seconds": demo["seconds"],
                "test_bpd": demo["output"].get("test_bpd"),
                "fid_digits_pc": demo["output"].get("fid_digits_pc"),
            },
            "classifier": {
                "train_steps": clf["output"]["steps"],
                "seconds": clf["seconds"],
                "final_loss": clf["output"]["final_loss"],
                "accuracy_by_t": accuracy,
            },
            "samples": guided,
        },
        "classifier_free_guidance": {
            "score_model": {
                "run": "scoresde train digits_subvp, model.num_classes=10, train.label_dropout=0.1",
                "train_steps": cond["output"]["steps"],
                "seconds": cond["seconds"],
                "final_loss": cond["output"]["final_loss"],
            },
            "samples": free,
        },
        "colorization": color,
        "figures": figures,
        "seconds_this_invocation": round(time.perf_counter() - start, 1),
        "seconds_all_steps": round(
            sum(r["seconds"] or 0 for r in map(runner.load, _record_names(runner))), 1
        ),
    }
    (docs / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(
        json.dumps(
            {
                "docs": str(docs),
                "figures": figures,
                "seconds_all_steps": report["seconds_all_steps"],
            }
        )
    )


def _record_names(runner: Runner) -> list[str]:
    return [p.stem for p in sorted(runner.records.glob("*.json"))]


if __name__ == "__main__":
    main()
