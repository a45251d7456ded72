"""What a trial can be built from, as data: every loss, model, dataset, calibrator, optimiser and LR schedule with
its description and parameters (`Param`s), and nothing that imports torch or numpy.

Config validation (trainables.config), the space checker (spaces.validation) and `gce-search validate` read these
registries; the modules that hold the code attach each implementation to its entry (`@LOSSES.implements("gce")` in
trainables.losses, `@MODELS.implements(...)` in trainables.models, and so on), so a name is declared once, here.
A parameter's name is the keyword of the implementation that takes it (the contract tests check that).
"""
from __future__ import annotations

from gce_search.trainables.registry import Param, Registry

# ------------------------------------------------------------------------------------------------------------ losses

# Traits every loss has: `stateful` (the implementation is a Loss class with per-epoch state, not a function) and
# `batch_coupled` (each value depends on the whole batch, so the function takes a DDP `process_group`).
LOSSES = Registry("loss", stateful=False, batch_coupled=False)

# AdaFocal constants from Ghosh et al. 2022 and their official code: the switch point between focal and
# inverse-focal and the clip range of gamma.
ADAFOCAL_SWITCH = 0.2
ADAFOCAL_GAMMA_MIN = -2.0
ADAFOCAL_GAMMA_MAX = 20.0

LOSSES.add("cross_entropy", "-log p_t")
LOSSES.add("gce", "generative cross-entropy: -log p_t + lam * log(batch mean of p(y_i|x_j))",
           {"lam": Param(1.0, low=0.0, doc="weight of the class-level confidence regulariser; 0 is cross-entropy")},
           batch_coupled=True)
LOSSES.add("label_smoothing", "cross-entropy to (1 - alpha) * onehot + alpha / K",
           {"alpha": Param(0.05, low=0.0, high=1.0, high_inclusive=False,
                           doc="label-smoothing mass spread over the K classes")})
LOSSES.add("brier", "sum over classes of (p_k - onehot_k)^2")
LOSSES.add("mmce", "cross-entropy + lam * MMCE (Kumar 2018), Laplacian kernel of width 0.4",
           {"lam": Param(2.0, low=0.0, doc="weight of the MMCE term"),
            "weighted": Param(True, kind="bool",
                              doc="Kumar 2018's weighted MMCE_w (true) or unweighted MMCE_m (false)")},
           batch_coupled=True)
LOSSES.add("focal", "-(1 - p_t)^gamma log p_t (Lin 2017)",
           {"gamma": Param(3.0, low=0.0, doc="focusing exponent")})
LOSSES.add("flsd53", "focal with gamma 5 if p_t < 0.2 else 3 (Mukhoti 2020)")
LOSSES.add("dual_focal", "-(1 - p_t + p_j)^gamma log p_t (Tao 2023)",
           {"gamma": Param(5.0, low=0.0, doc="focusing exponent"),
            "other": Param("below_target", choices=("below_target", "largest"),
                           doc="p_j: largest probability below p_t (Tao 2023's code) or largest non-target "
                               "probability")})
LOSSES.add("adafocal", "focal with per-confidence-bin gamma adapted each epoch on validation (Ghosh 2022)",
           {"lam": Param(1.0, low=0.0, doc="step size of the per-bin gamma update"),
            "gamma_init": Param(1.0, low=ADAFOCAL_GAMMA_MIN, high=ADAFOCAL_GAMMA_MAX,
                                doc="gamma of every bin before the first update (negative: inverse focal)"),
            "n_bins": Param(15, low=1, kind="int", doc="equal-mass validation-confidence bins"),
            "bin_by": Param("target_prob", choices=("target_prob", "confidence"),
                            doc="which probability of a training sample picks its bin")},
           stateful=True)

# ------------------------------------------------------------------------------------------------------------ models

# `min_image_size`: the smallest input height/width the network's downsampling can take.
MODELS = Registry("model", min_image_size=1)

_RESNET_WIDTH = {"width": Param(64, low=1, kind="int", doc="planes of the first stage; later stages double it")}

MODELS.add("mlp", "fully connected net on flattened pixels: `depth` hidden layers of `width` ReLU units",
           {"width": Param(256, low=1, kind="int", doc="hidden units per layer"),
            "depth": Param(2, low=0, kind="int", doc="hidden layers (0: a linear classifier)"),
            "dropout": Param(0.0, low=0.0, high=1.0, high_inclusive=False, doc="dropout before each linear")})
MODELS.add("small_cnn", "two conv blocks (2× conv3×3-BN-ReLU, max-pool) and a hidden linear layer; sized for "
                        "28×28 (Fashion-MNIST) and works down to 4×4 (digits' 8×8)",
           {"width": Param(32, low=1, kind="int", doc="channels of the first block; the second has twice as many"),
            "hidden": Param(128, low=1, kind="int", doc="units of the hidden linear layer"),
            "dropout": Param(0.0, low=0.0, high=1.0, high_inclusive=False, doc="dropout before the classifier")},
           min_image_size=4)
MODELS.add("gap_cnn", "three conv3×3-BN-ReLU blocks (w, 2w, 4w channels; max-pool after the first two), global "
                      "average pool and a linear classifier; w = 32: 94k parameters on Fashion-MNIST",
           {"width": Param(32, low=1, kind="int", doc="channels of the first block; then 2w and 4w")},
           min_image_size=4)
MODELS.add("fast_cnn", "airbench-style conv net for 32×32 (Jordan 2024): widths (w, 4w, 4w), GELU, max-pool",
           {"width": Param(64, low=1, kind="int", doc="channels of the first group (airbench94: 64)"),
            "logit_scale": Param(1 / 9, low=0.0, low_inclusive=False, doc="multiplies the logits (airbench: 1/9)")})
MODELS.add("resnet18", "CIFAR ResNet-18: basic blocks [2, 2, 2, 2], 3×3 stem", _RESNET_WIDTH)
MODELS.add("resnet34", "CIFAR ResNet-34: basic blocks [3, 4, 6, 3], 3×3 stem", _RESNET_WIDTH)
MODELS.add("resnet50", "CIFAR ResNet-50: bottleneck blocks [3, 4, 6, 3], 3×3 stem (the calibration papers' "
                       "main network)", _RESNET_WIDTH)
MODELS.add("resnet110", "ResNet-110 for CIFAR (He et al. 2016): 6n+2 layers, n = 18 basic blocks per stage, "
                        "widths 16/32/64, parameter-free zero-padding shortcuts",
           {"width": Param(16, low=1, kind="int", doc="planes of the first stage (He et al.: 16)")})
MODELS.add("wrn_26_10", "Wide ResNet 26-10 as in the calibration papers' code (Mukhoti et al. 2020): 16-channel "
                        "3×3 stem, 3 stages of n = 4 post-activation basic blocks (depth 6n+2 = 26), widths "
                        "16k/32k/64k with k = 10",
           {"widen": Param(10, low=1, kind="int", doc="width multiplier k")})
MODELS.add("densenet121", "DenseNet-121 for small images: dense blocks [6, 12, 24, 16], growth 32, "
                          "compression 0.5", {"growth_rate": Param(32, low=1, kind="int", doc="channels per layer")},
           min_image_size=8)

# ---------------------------------------------------------------------------------------------------------- datasets

# A dataset's params are its own options, given in the trial config as `data.subset: "key=value,key=value"` (only
# `synthetic` declares any); the implementation is `loader(root, subset, download, options) -> RawData`.
DATASETS = Registry("dataset", own_data=False)

DATASETS.add("digits", "scikit-learn's bundled handwritten digits: 1,797 images, 1×8×8, 10 classes, no test split")
DATASETS.add("fashion_mnist", "Fashion-MNIST (Xiao et al. 2017): 60k + 10k images, 1×28×28, 10 classes; idx files")
DATASETS.add("cifar10", "CIFAR-10: 50k + 10k images, 3×32×32, 10 classes; the python-pickle batches "
                        "(cifar-10-batches-py) under data.root")
DATASETS.add("cifar100", "CIFAR-100 (fine labels): 50k + 10k images, 3×32×32, 100 classes; the python-pickle "
                         "files (cifar-100-python) under data.root")
DATASETS.add("tiny_imagenet", "Tiny-ImageNet: 100k train + 10k val images, 3×64×64, 200 classes; the "
                              "tiny-imagenet-200 folder under data.root (val serves as the test split)")
DATASETS.add("medmnist", "a MedMNIST subset (Yang et al. 2023): <data.root>/<data.subset>.npz with train_/val_/"
                         "test_images and _labels; the official val split joins the train/calib/val pool")
DATASETS.add("synthetic", "seeded class prototypes plus Gaussian noise, for tests; options in data.subset as "
                          "'classes=4,size=8,channels=1,train=512,test=256,noise=1.0,seed=0'",
             {"classes": Param(4, low=2, kind="int", doc="number of classes"),
              "size": Param(8, low=1, kind="int", doc="image height and width, pixels"),
              "channels": Param(1, low=1, kind="int", doc="image channels"),
              "train": Param(512, low=1, kind="int", doc="images in the train/calib/val pool"),
              "test": Param(256, low=1, kind="int", doc="images in the test split"),
              "noise": Param(1.0, low=0.0, doc="per-pixel noise std; class prototypes have unit std"),
              "seed": Param(0, low=0, kind="int", doc="seeds prototypes and samples")})

# Your own data (docs/byo.md, "Data"): read by trainables.data from data.root, data.path or data.factory, not from
# data.subset; decoded into memory when it fits data.memory_limit, streamed through a DataLoader otherwise. These
# entries (trait own_data) are implemented as `opener(data_cfg) -> RawData` of lazily decoded images.
DATASETS.add("image_folder", "your images in torchvision's ImageFolder layout: <data.root>/train/<class>/*.png|jpg, "
                             "optional val/ and test/ with the same classes; decoded with PIL", own_data=True)
DATASETS.add("arrays", "your arrays: data.path names an .npz with x_train, y_train and optionally x_test, y_test "
                       "(images NCHW or NHWC, uint8 or float, or feature vectors N×D for mlp)", own_data=True)
DATASETS.add("factory", "your function: data.factory 'module:function', called with data.options as keyword "
                        "arguments, returns arrays (as for arrays) or torch Datasets", own_data=True)

# ------------------------------------------------------------------------------------------------------- calibrators

# The implementation is the Calibrator class; its settings are the calibration section's keys (trainables.config).
CALIBRATORS = Registry("calibrator")

CALIBRATORS.add("none", "no calibration: temperatures [1.0]")
CALIBRATORS.add("ts", "temperature scaling: one T fitted by NLL on the calibration split (Guo et al. 2017)")
CALIBRATORS.add("ats", "adaptive piecewise temperature scaling: one T per piece of uncalibrated confidence, split "
                       "at calibration.breakpoints")
# The calibrators that read calibration.breakpoints (a breakpoint search is active only under them).
BREAKPOINT_CALIBRATORS = ("ats",)

# ---------------------------------------------------------------------------------------- optimisers and LR schedules

# Optimisers: `build(params, train_cfg) -> torch.optim.Optimizer`; their settings are train.* keys.
OPTIMIZERS = Registry("optimizer")

OPTIMIZERS.add("sgd", "SGD with train.momentum (optional Nesterov) and train.weight_decay")
OPTIMIZERS.add("adamw", "AdamW with train.weight_decay (decoupled)")

# LR schedules: `lr(train_cfg, step, steps_per_epoch) -> float` for optimiser step `step` of the whole run.
LR_SCHEDULES = Registry("LR schedule")

LR_SCHEDULES.add("constant", "train.lr throughout")
LR_SCHEDULES.add("cosine", "cosine annealing from train.lr to 0 over train.epochs, stepped per epoch")
LR_SCHEDULES.add("cosine_step", "cosine annealing from train.lr to 0 over all optimiser steps, stepped per step")
LR_SCHEDULES.add("multistep", "train.lr times train.gamma at each of train.milestones (epochs)")
LR_SCHEDULES.add("onecycle", "torch's OneCycleLR per step: cosine warm-up over 30% to train.lr, then annealing")

# ------------------------------------------------------------------------------------------------------------ plug-ins

# Installed distributions add losses, models, datasets and calibrators through these entry-point groups (docs/byo.md,
# "Plug-ins"); each registry loads its group the first time it is read by name.
LOSSES.enable_plugins("gce_search.losses")
MODELS.enable_plugins("gce_search.models")
DATASETS.enable_plugins("gce_search.datasets")
CALIBRATORS.enable_plugins("gce_search.calibrators")
