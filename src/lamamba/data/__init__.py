"""Data for diffusion training: image folders, built-in datasets, VAE latent shards, resumable loading.

``build_dataset(spec, image_size=...)`` is the entry point; ``build_dataloader`` batches any of its results
per rank with a saveable position.
"""
from .builtin import DigitsDataset, FashionMNISTDataset, read_idx
from .folder import IMAGE_EXTENSIONS, ImageFolderDataset
from .latents import LatentDataset, extract_latents, is_latent_dir
from .loader import ResumableLoader, ResumableSampler, build_dataloader
from .registry import BUILTIN_DATASETS, build_dataset
from .transforms import ImageTransform, center_crop, hflip, to_tensor

__all__ = [
    "BUILTIN_DATASETS", "IMAGE_EXTENSIONS", "DigitsDataset", "FashionMNISTDataset", "ImageFolderDataset",
    "ImageTransform", "LatentDataset", "ResumableLoader", "ResumableSampler", "build_dataloader",
    "build_dataset", "center_crop", "extract_latents", "hflip", "is_latent_dir", "read_idx", "to_tensor",
]
