"""transformers' own common model tests (`ModelTesterMixin`, `ConfigTester`), taken from the `tests/` folder of the
sdist of the installed transformers version: pip downloads it once into a cache folder (`ST_AR_HF_TEST_CACHE`, default
`~/.cache/st-ar-hf`), where it is imported as the package `transformers_tests`.

The sdist ships the top-level common files only; three names they import live in subfolders it lacks, and stand-ins
are written for them (never copies): `GenerationTesterMixin` (used only in an `issubclass` check: our models generate
with their own decoding) and `ExportTesterMixin` (`ModelTesterMixin`'s base, holding the `torch.export` tests) as empty
classes, so the export tests are not part of the suite run here (`torch.export` is tested in each model's own test
file); and `config_common_kwargs` (`ConfigTester.check_config_arguments_init`) as every public attribute of a v5
`PreTrainedConfig()` set to a value other than its default. Without the sdist (no network on a fresh machine) the
adapters skip with that reason."""

import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import transformers

VERSION = transformers.__version__
CACHE = Path(os.environ.get("ST_AR_HF_TEST_CACHE", Path.home() / ".cache" / "st-ar-hf")) / f"transformers-{VERSION}"
STAND_INS = {  # files of tests/ that the sdist does not ship -> what stands in for the names imported from them
    "exporters/test_export.py": "class ExportTesterMixin:\n    pass\n",
    "generation/test_utils.py": "class GenerationTesterMixin:\n    pass\n",
    "utils/test_configuration_utils.py": (
        "config_common_kwargs = {'return_dict': False, 'output_hidden_states': True, 'output_attentions': True,\n"
        "    'dtype': 'float16', 'chunk_size_feed_forward': 5, 'architectures': ['BertModel'], 'id2label': {0: 'label'},\n"
        "    'label2id': {'label': 0}, 'problem_type': 'regression'}\n"
    ),
}


def _unpack() -> None:
    """Downloads the sdist with pip and unpacks its tests/ as CACHE/transformers_tests (atomically: aside, then
    renamed, so an interrupted download leaves nothing half-unpacked)."""
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE.parent) as scratch:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        f"transformers=={VERSION}", "-d", scratch], check=True, capture_output=True, timeout=600)
        (sdist,) = Path(scratch).glob("transformers-*.tar.gz")
        package = Path(scratch) / "suite" / "transformers_tests"
        with tarfile.open(sdist) as archive:
            prefix = f"transformers-{VERSION}/tests/"
            members = [m for m in archive.getmembers() if m.name.startswith(prefix) and m.isfile()]
            for member in members:
                member.name = member.name[len(prefix):]
            archive.extractall(package, members=members, filter="data")
        for file, code in STAND_INS.items():
            path = package / file
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                (path.parent / "__init__.py").touch()
                path.write_text(f"# stand-in written by st-ar-hf: the sdist does not ship {file}\n{code}")
        (package / "__init__.py").touch()
        os.replace(package.parent, CACHE)


def load_suite():
    """(ModelTesterMixin, ConfigTester, ids_tensor, floats_tensor), or a skip reason as a str."""
    common = CACHE / "transformers_tests" / "test_modeling_common.py"
    if not common.is_file():
        try:
            _unpack()
        except (subprocess.SubprocessError, OSError, ValueError) as error:
            if not common.is_file():  # else another test worker unpacked it first
                return f"transformers {VERSION}'s test suite is not cached and its sdist could not be fetched: {error}"
    if str(CACHE) not in sys.path:
        sys.path.insert(0, str(CACHE))
    from transformers_tests.test_configuration_common import ConfigTester
    from transformers_tests.test_modeling_common import ModelTesterMixin, floats_tensor, ids_tensor

    return ModelTesterMixin, ConfigTester, ids_tensor, floats_tensor
