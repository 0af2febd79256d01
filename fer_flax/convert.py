"""Command line: `python -m fer_flax.convert --source $DATA/fer2013.csv --out $DATA/fer2013_records`.

Converts a data source into a records folder: each split as sharded ArrayRecord files (one raw uint8
image and its label, or FER+ votes, per record) and `records.json` with the data spec and every split's
count and label histogram. Training reads such a folder lazily (`--config.data.path=$DATA/fer2013_records`):
a process holds its batches, not the split (docs/data.md).

The source is anything `config.data.path` accepts: a FER2013 CSV (.csv/.csv.gz), an image-folder tree
or a .tar(.gz) of one, a FER+ folder or archive; `--format` and the image-folder flags mean what the
`config.data` keys of the same names mean. `--out` must not exist: it is written under a temporary name
and renamed once complete, so a failed conversion (which names the bad file and row or image) leaves
nothing behind.
"""

from __future__ import annotations

from absl import app, flags

from fer_flax import cli
from fer_flax.config import defaults
from fer_flax.config.choices import DATA_FORMATS
from fer_flax.data import record_writer, to_records

COMMAND = cli.Command(start_jax=False, log_level="error")


def define_flags() -> None:
    flags.DEFINE_string("source", None, "The data to convert (FER2013 CSV, image folders, FER+, tar).")
    flags.DEFINE_string("out", None, "The records folder to write (must not exist).")
    flags.DEFINE_list("splits", ["train", "val", "test"], "The splits to convert.")
    flags.DEFINE_integer("shards", None, "Shard files per split (default: by --records_per_shard).")
    flags.DEFINE_integer(
        "records_per_shard",
        None,
        f"Records per shard file when --shards is unset (default {record_writer.DEFAULT_RECORDS_PER_SHARD}).",
    )
    flags.DEFINE_enum("format", "auto", [f for f in DATA_FORMATS if f != "records"], "What --source holds.")
    flags.DEFINE_list("classes", None, "Image folders: class names in label order.")
    flags.DEFINE_list("class_folders", None, "Image folders: each class's folder name.")
    flags.DEFINE_list("image_size", None, "Image folders: height,width.")
    flags.DEFINE_integer("channels", None, "Image folders: 1 (grayscale) or 3 (RGB).")
    flags.DEFINE_bool(
        "convert_images", False, "Image folders: resize and convert colour instead of refusing."
    )
    flags.DEFINE_integer(
        "progress_every", record_writer.PROGRESS_EVERY, "Print a progress line every this many records."
    )
    flags.mark_flags_as_required(["source", "out"])


def main(argv: list[str]) -> None:
    del argv
    f = flags.FLAGS
    if f.shards is not None and f.records_per_shard is not None:
        raise app.UsageError("give --shards or --records_per_shard, not both")
    data = defaults.get_base_config().data
    data.path, data.format = f.source, f.format
    data.classes = tuple(f.classes) if f.classes else None
    data.class_folders = tuple(f.class_folders) if f.class_folders else None
    data.image_size = tuple(int(v) for v in f.image_size) if f.image_size else None
    data.channels, data.convert_images = f.channels, f.convert_images
    meta = to_records.convert(
        data, f.out, f.splits, shards=f.shards, records_per_shard=f.records_per_shard, every=f.progress_every
    )
    counts = ", ".join(f"{s} {e['count']} in {len(e['shards'])} shard(s)" for s, e in meta["splits"].items())
    print(f"Wrote {f.out}: {counts}. Train on it with --config.data.path={f.out}")


if __name__ == "__main__":
    cli.main_of("fer_flax.convert")
