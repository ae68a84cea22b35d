"""Publishing to the Hub: `push_run` (behind `st-ar push`) uploads a training run's export with a freshly rendered
card, `BackgroundUploader` uploads the training scripts' exports while they train; both go through `upload_folder`."""

import json
import logging
import threading
import time
from pathlib import Path

from huggingface_hub import HfApi, ModelCard
from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError
from huggingface_hub.utils import validate_repo_id
from safetensors import SafetensorError, safe_open

from .models.llamagen import LlamaGenVQVAE, LlamaGenVQVAEConfig
from .model_cards import (
    GENERATION_TASK, RECONSTRUCTION_TASK, eval_results, pipeline_model_card, tokenizer_model_card, training_datasets,
)
from .training.checkpointing import list_checkpoints

logger = logging.getLogger(__name__)
EVALUATION_FILE = "evaluation.json"  # read from RUN_DIR when no --eval-results is given


def upload_folder(repo_id: str, folder: str | Path, commit_message: str, private: bool = False,
                  repo_type: str = "model", **upload_kwargs):
    """Creates the repo if needed, then uploads `folder` in one commit (`upload_kwargs`: `path_in_repo`,
    `allow_patterns`, `ignore_patterns` of `HfApi.upload_folder`). Returns the `CommitInfo`."""
    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type=repo_type)
    return api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message,
                             repo_type=repo_type, **upload_kwargs)


class BackgroundUploader:
    """Uploads folders to a Hub repo in a background thread, retrying with backoff. A failure is logged and never
    raised, so an unreachable Hub never stops training. `wait()` blocks until queued uploads are done."""

    def __init__(self, repo_id: str, private: bool = False, retries: int = 3, backoff_s: float = 5.0,
                 repo_type: str = "model"):
        self.repo_id, self.private, self.retries, self.backoff_s = repo_id, private, retries, backoff_s
        self.repo_type = repo_type
        self.failures, self.threads = [], []

    def upload(self, folder: str | Path, commit_message: str, ignore_patterns: list[str] | None = None) -> None:
        thread = threading.Thread(target=self._upload, args=(str(folder), commit_message, ignore_patterns), daemon=True)
        thread.start()
        self.threads.append(thread)

    def _upload(self, folder, commit_message, ignore_patterns):
        for attempt in range(1, self.retries + 1):
            try:
                upload_folder(self.repo_id, folder, commit_message, self.private, self.repo_type,
                              ignore_patterns=ignore_patterns)
                logger.info(f"uploaded {folder} to {self.repo_id}")
                return
            except Exception as error:  # noqa: BLE001 -- any failure is retried, then reported, never raised
                logger.warning(f"upload of {folder} to {self.repo_id} failed (attempt {attempt}/{self.retries}): {error}")
                if attempt < self.retries:
                    time.sleep(self.backoff_s * attempt)
        self.failures.append(folder)

    def wait(self, timeout_s: float | None = None) -> None:
        for thread in self.threads:
            thread.join(timeout_s)


def check_star_pipeline(folder: Path, argument: str) -> None:
    """Raises a ValueError naming `argument` unless `folder` holds a saved STARPipeline (plain or remote-code)."""
    if not (folder / "model_index.json").is_file():
        raise ValueError(f"{argument} {folder} holds no model_index.json: not a saved pipeline")
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except ValueError as error:
        raise ValueError(f"{argument} {folder}: model_index.json is not valid JSON ({error})") from None
    if not isinstance(index, dict):
        raise ValueError(f"{argument} {folder}: model_index.json must hold a mapping, got a {type(index).__name__}")
    class_name = index.get("_class_name")
    if class_name not in ("STARPipeline", ["pipeline_star", "STARPipeline"]):
        raise ValueError(f"{argument} {folder} holds a {class_name} pipeline, not a STARPipeline")


def load_star_pipeline(model: str, argument: str = "--model"):
    """`STARPipeline.from_pretrained(model)` (a local folder or a Hub repo id, downloaded or from the HF cache) with
    errors that name `argument`: a repo that does not exist, or a folder or repo that holds no STARPipeline."""
    from .pipelines import STARPipeline

    try:
        folder = Path(model) if Path(model).is_dir() else Path(STARPipeline.download(model))
    except (RepositoryNotFoundError, HFValidationError) as error:
        raise ValueError(f"{argument} {model!r} is neither a local folder nor a Hub repo (or the repo is private or "
                         "gated: log in with `hf auth login`)") from error
    check_star_pipeline(folder, f"{argument} {model!r}:" if folder != Path(model) else argument)
    try:
        return STARPipeline.from_pretrained(folder)
    except SafetensorError as error:
        broken = [str(p.relative_to(folder)) for p in folder.glob("*/*.safetensors") if not _readable_safetensors(p)]
        raise ValueError(f"{argument} {model!r}: unreadable weights {broken} (truncated download or copy?): "
                         f"{error}") from None


def _readable_safetensors(path: Path) -> bool:
    try:
        with safe_open(path, "pt"):  # the header's check covers a truncated file
            return True
    except SafetensorError:
        return False


def find_export(run_dir: str | Path) -> tuple[Path, str]:
    """(folder, "pipeline" or "tokenizer"): RUN_DIR itself when it is a saved STARPipeline or LlamaGenVQVAE, else
    its `pipeline/` (train.py), else its `vqvae/` (train_tokenizer.py)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"RUN_DIR {run_dir}: no such folder")
    for folder in (run_dir, run_dir / "pipeline", run_dir / "vqvae"):
        if (folder / "model_index.json").is_file():
            check_star_pipeline(folder, "RUN_DIR")
            return folder, "pipeline"
        if (folder / "config.json").is_file():
            model_type = json.loads((folder / "config.json").read_text()).get("model_type")
            if model_type != LlamaGenVQVAEConfig.model_type:
                raise ValueError(f"RUN_DIR {folder} holds a {model_type!r} model, neither a STARPipeline nor a "
                                 "LlamaGen tokenizer (to publish a GPT, save it in a STARPipeline with its tokenizer)")
            return folder, "tokenizer"
    raise ValueError(f"RUN_DIR {run_dir} holds no export: expected model_index.json (a STARPipeline), config.json "
                     "(a tokenizer), or a training run's pipeline/ or vqvae/ folder")


def load_eval_results(files: list[str | Path], dataset: str | None, task: tuple[str, str]) -> list:
    """The `EvalResult`s of results JSON files such as `st-ar evaluate --output-file` writes, on the data set `dataset`."""
    results = []
    for file in map(Path, files):
        if not file.is_file():
            raise ValueError(f"--eval-results {file}: no such file")
        if dataset is None:
            raise ValueError(f"--eval-results {file} needs --eval-dataset (the Hub data set of the reference batch): "
                             "the training data is unknown or not on the Hub")
        try:
            content = json.loads(file.read_text())
            if not isinstance(content, dict):
                raise ValueError(f"expected a JSON object, got {type(content).__name__}")
            results += eval_results(content, dataset, task)
        except ValueError as error:  # json.JSONDecodeError is a ValueError too
            raise ValueError(f"--eval-results {file}: {error}") from error
    return results


def render_card(folder: Path, kind: str, training: dict | None, evaluation: list, repo_id: str,
                base_model: str | None) -> ModelCard:
    """The card of an export, from the templates: the model itself, its training summary, the evaluation results,
    and the base model (given, or kept from the card already there)."""
    from .pipelines import STARPipeline

    card_file = folder / "README.md"
    base_model = base_model or (ModelCard.load(card_file).data.base_model if card_file.is_file() else None)
    if kind == "tokenizer":
        return tokenizer_model_card(LlamaGenVQVAE.from_pretrained(folder), training, evaluation, repo_id, base_model)
    remote_code = (folder / "pipeline_star.py").is_file()  # the card says how to load it without the package
    pipeline = STARPipeline.from_pretrained(folder)  # the package's code: pushing never runs the folder's
    return pipeline_model_card(pipeline, remote_code, training, evaluation, repo_id, base_model)


def push_run(run_dir: str | Path, repo_id: str, eval_results_files: list[str | Path] = (),
             eval_dataset: str | None = None, base_model: str | None = None, private: bool = False,
             commit_message: str | None = None, include_checkpoints: bool = False) -> list[str]:
    """Uploads a training run's STARPipeline (or tokenizer) to `repo_id` with a card rendered from the templates
    (evaluation results as model-index entries). Checkpoints (optimiser, scheduler, EMA teacher, random states)
    stay local unless `include_checkpoints`, which uploads RUN_DIR/checkpoint-* under `checkpoints/`. Every input
    is checked before the first upload. Returns the commit URLs."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"--repo-id {repo_id!r}: {error}") from error
    folder, kind = find_export(run_dir)
    checkpoints = list_checkpoints(run_dir) if include_checkpoints else []
    if include_checkpoints and not checkpoints:
        raise ValueError(f"--include-checkpoints: RUN_DIR {run_dir} has no checkpoint-N folders")
    summary_file = folder / "training_summary.json"  # written by train.py and train_tokenizer.py
    training = json.loads(summary_file.read_text()) if summary_file.is_file() else None
    dataset = eval_dataset or (training_datasets(training["arguments"] if training else {}) or [None])[0]
    if not eval_results_files and (Path(run_dir) / EVALUATION_FILE).is_file():
        eval_results_files = [Path(run_dir) / EVALUATION_FILE]
    task = GENERATION_TASK if kind == "pipeline" else RECONSTRUCTION_TASK
    evaluation = load_eval_results(eval_results_files, dataset, task)

    # the card is written after the export's save_pretrained, so nothing overwrites it before the upload
    render_card(folder, kind, training, evaluation, repo_id, base_model).save(folder / "README.md")
    commits = [upload_folder(repo_id, folder, commit_message or f"Upload {kind} from {Path(run_dir).name}", private)]
    if checkpoints:
        commits.append(upload_folder(repo_id, run_dir, f"Upload training checkpoints of {Path(run_dir).name}", private,
                                     path_in_repo="checkpoints",
                                     allow_patterns=[f"{checkpoint.name}/*" for checkpoint in checkpoints]))
    return [commit.commit_url for commit in commits]
