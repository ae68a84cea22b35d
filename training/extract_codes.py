#!/usr/bin/env python
"""LlamaGen's pre-tokenisation with Accelerate: every image's ten crops (4 corners, centre and their flips of the
centre crop at 1.1x) encoded by a VQ tokenizer, written as parquet code shards that `train.py --train_codes` streams.
A Prologue tokenizer's codes are written as its AR's sequences: prologue codes (offset past the visual ones), EOS,
visual codes (Prologue's phase 2, `train_pretoken.py`).

    accelerate launch training/extract_codes.py --dataset ILSVRC/imagenet-1k --vqvae org/llamagen-vq16 --output_dir codes/

Each process encodes its share of the stream (`split_dataset_by_node`) into `train-<process>-<shard>.parquet`
(`codes` int32 [crops, h*w], `label` with the source's ClassLabel names). A shard appears only when complete, and
`progress-<process>.json` records the stream position after it, so an interrupted run continues where it stopped.
It and `codes_info.json` (written last) bind the shards to the sha256 of the tokenizer's weights: a run with another
tokenizer into the folder is refused, and so is `train.py` with another `--vqvae`. Undecodable images are skipped and
counted. The folder gets a dataset card and can be pushed as a dataset repo.
"""

import json
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from datasets import Array2D, ClassLabel, Dataset, Features, Value
from datasets.distributed import split_dataset_by_node
from tqdm.auto import tqdm

from transformers import AutoModel

from st_ar_hf.hub import BackgroundUploader
from st_ar_hf.model_cards import code_shards_card, training_datasets
from st_ar_hf.training.arguments import ExtractCodesArguments, run_script
from st_ar_hf.training.data import (
    check_codes_tokenizer, check_columns, class_names, crop_views, decode_image, load_image_dataset, to_pixel_values,
    tokenizer_digest,
)
from st_ar_hf.training.prologue import prior_sequence
from st_ar_hf.training.tracking import finish_run

logger = get_logger(__name__)


def main(args: ExtractCodesArguments) -> None:
    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    vqvae = AutoModel.from_pretrained(args.vqvae).to(accelerator.device).eval()
    prologue = vqvae.config.model_type == "prologue_tokenizer"
    if vqvae.config.model_type not in ("llamagen_vqvae", "prologue_tokenizer"):
        raise ValueError(f"--vqvae holds a {vqvae.config.model_type}; code shards are written for LlamaGen and Prologue "
                         f"tokenizers (scale-wise models encode their images on the fly)")
    if prologue and args.image_size != vqvae.config.image_size:
        raise ValueError(f"--image_size {args.image_size} differs from the Prologue tokenizer's {vqvae.config.image_size}")
    if args.image_size % vqvae.config.downsample_factor:
        raise ValueError(f"--image_size {args.image_size} is not a multiple of the tokenizer's downsampling "
                         f"{vqvae.config.downsample_factor}")
    vqvae_path = Path(args.vqvae)
    tokenizer = {"vqvae": str(vqvae_path.resolve()) if vqvae_path.is_dir() else args.vqvae,
                 "vqvae_sha256": tokenizer_digest(vqvae)}
    for record in [output_dir / "codes_info.json", *sorted(output_dir.glob("progress-*.json"))]:  # shards already there
        if record.is_file():
            check_codes_tokenizer(f"--output_dir {output_dir} ({record.name})", json.loads(record.read_text()),
                                  args.vqvae, tokenizer["vqvae_sha256"])
    dataset = load_image_dataset(args, accelerator.main_process_first)
    check_columns(dataset, image_column=args.image_column, label_column=args.label_column)
    names = class_names(dataset, args.label_column)
    grid_size = args.image_size // vqvae.config.downsample_factor
    num_prologue = vqvae.config.num_prologue_tokens if prologue else 0
    num_crops = (10 if args.ten_crop else 2) // (1 if args.random_flip else 2)
    num_tokens = num_prologue + int(num_prologue > 0) + grid_size**2
    features = Features({"codes": Array2D((num_crops, num_tokens), "int32"),
                         "label": ClassLabel(names=names) if names else Value("int64")})
    stream = split_dataset_by_node(dataset.decode(False), rank=accelerator.process_index,
                                   world_size=accelerator.num_processes)

    progress_file = output_dir / f"progress-{accelerator.process_index}.json"
    progress = json.loads(progress_file.read_text()) if progress_file.is_file() else {
        **tokenizer, "position": 0, "shards": 0, "examples": 0, "skipped": 0}
    shard_codes, shard_labels, images, labels = [], [], [], []

    def encode_pending():
        pixels = to_pixel_values([view for views in images for view in views]).to(accelerator.device)  # [N*crops, 3, H, W]
        with torch.inference_mode(), accelerator.autocast():
            encoded = vqvae.encode(pixels)
            indices = encoded.indices.flatten(1)  # [N*crops, h*w]
            if prologue:  # [N*crops, P + 1 + h*w] in the AR's vocabulary
                indices = prior_sequence(encoded.prologue_indices, indices, vqvae.config.codebook_size,
                                         vqvae.config.prologue_codebook_size)
        shard_codes.append(indices.view(len(images), num_crops, num_tokens).to(torch.int32).cpu().numpy())
        shard_labels.extend(labels)
        images.clear(), labels.clear()

    def write_shard(position):
        codes = np.concatenate(shard_codes)
        path = output_dir / f"train-{accelerator.process_index:05d}-{progress['shards']:05d}.parquet"
        Dataset.from_dict({"codes": codes, "label": shard_labels}, features=features).to_parquet(str(path) + ".partial")
        Path(str(path) + ".partial").rename(path)
        progress.update(position=position, shards=progress["shards"] + 1, examples=progress["examples"] + len(codes))
        progress_file.with_suffix(".partial").write_text(json.dumps(progress))
        progress_file.with_suffix(".partial").rename(progress_file)  # a kill leaves the old position or the new one
        shard_codes.clear(), shard_labels.clear()

    bar = tqdm(desc=f"process {accelerator.process_index}", initial=progress["examples"],
               disable=not accelerator.is_local_main_process)
    position = progress["position"]
    for index, example in enumerate(stream):
        if index < progress["position"]:
            continue  # written by an earlier run
        if args.max_examples is not None and progress["examples"] + len(shard_labels) + len(images) >= args.max_examples:
            break
        position = index + 1
        image = decode_image(example[args.image_column])
        if image is None:
            progress["skipped"] += 1
            continue
        images.append(crop_views(image, args.image_size, args.crop_range, args.ten_crop, args.random_flip))
        labels.append(int(example[args.label_column]))
        bar.update(1)
        if len(images) == args.batch_size:
            encode_pending()
        if len(shard_labels) >= args.shard_size:
            write_shard(position)
    if images:
        encode_pending()
    if shard_labels:
        write_shard(position)

    totals = accelerator.reduce(torch.tensor([progress["examples"], progress["skipped"]], device=accelerator.device), "sum")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        examples, skipped = totals.tolist()
        logger.info(f"{examples} images encoded into {output_dir}, {skipped} undecodable images skipped")
        source = args.dataset or args.train_data_files or f"the embedded MNIST-5k digits ({args.embedded_dataset_dir})"
        info = output_dir / "codes_info.json.partial"
        info.write_text(json.dumps({  # lets train.py find (and check) the tokenizer; written last: then complete
            **tokenizer, "image_size": args.image_size,
            "num_crops": num_crops, "grid_size": grid_size, "codebook_size": vqvae.config.codebook_size,
            "num_prologue_tokens": num_prologue,
        }, indent=2) + "\n")
        code_shards_card(vqvae=args.vqvae, source=source, source_datasets=training_datasets(vars(args)),
                         image_size=args.image_size, crop_range=args.crop_range,
                         num_crops=num_crops, grid_size=grid_size, codebook_size=vqvae.config.codebook_size,
                         num_examples=examples, num_skipped=skipped).save(output_dir / "README.md")
        info.replace(output_dir / "codes_info.json")
        if args.push_to_hub:
            uploader = BackgroundUploader(args.hub_model_id or output_dir.name, args.hub_private_repo, args.upload_retries,
                                          repo_type="dataset")
            uploader.upload(output_dir, commit_message="code shards", ignore_patterns=["progress-*.json", "*.partial"])
            uploader.wait()
    finish_run(accelerator)


if __name__ == "__main__":
    run_script(main, ExtractCodesArguments)
