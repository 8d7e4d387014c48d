UNET_MODELS = {}  # temporary untracked stub
