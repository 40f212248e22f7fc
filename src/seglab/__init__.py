"""seglab: train and run image-segmentation models (U-Net, DeepLabV3) on folders of images and masks."""
__version__ = "0.1.0"
