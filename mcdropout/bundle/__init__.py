"""Model bundles: a manifest and safetensors weights in a folder, loaded as a ready predictor.

Architectures are named in :mod:`mcdropout.bundle.architectures` (the registry that
third-party packages extend through the ``mcdropout.architectures`` entry points).
"""

from mcdropout.bundle import architectures
from mcdropout.bundle._answering import summarise
from mcdropout.bundle._bundle import (
    MANIFEST,
    MAX_PARAMS,
    NAME_PATTERN,
    SCHEMA_VERSION,
    WEIGHTS,
    Bundle,
    BundleError,
    Manifest,
    NonFiniteError,
    Standardisation,
    flush_subnormals,
    load_bundle,
    nonfinite_rows,
    read_manifest,
    save_bundle,
    weights_hash,
)
from mcdropout.bundle._calibration import fit_bundle
from mcdropout.bundle._code import ALLOWED_MODULES_ENV, allowed_modules_from_env, parse_modules
from mcdropout.bundle._create import create, read_config
from mcdropout.bundle._pretrained import create_pretrained
from mcdropout.bundle._text import TOKENIZER, TextEncoder, TextError, TextInput

__all__ = [
    "ALLOWED_MODULES_ENV",
    "MANIFEST",
    "MAX_PARAMS",
    "NAME_PATTERN",
    "SCHEMA_VERSION",
    "TOKENIZER",
    "WEIGHTS",
    "Bundle",
    "BundleError",
    "Manifest",
    "NonFiniteError",
    "Standardisation",
    "TextEncoder",
    "TextError",
    "TextInput",
    "allowed_modules_from_env",
    "architectures",
    "create",
    "create_pretrained",
    "fit_bundle",
    "flush_subnormals",
    "load_bundle",
    "nonfinite_rows",
    "parse_modules",
    "read_config",
    "read_manifest",
    "save_bundle",
    "summarise",
    "weights_hash",
]
