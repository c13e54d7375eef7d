"""The early-exit model family: backbones, exits, training and export."""
