"""Image classification on the shared core (timm/torchvision backbones, albumentations)."""
