"""What the adversarial and few-shot problems share: a pretrained classifier and the images it takes."""

from __future__ import annotations

from pprs_mpi import classifier, datasets
from pprs_mpi.problems import Parameter

#: The parameters both problems take: which pretrained network, and its data.
PRETRAINED = {
    "network": Parameter(str, "", "classifier weights file (pprs_mpi.classifier format); '' = the shipped digits "
                                  "network"),
    "dataset": Parameter(str, "digits", f"images the network takes: {' or '.join(datasets.DATASETS)}"),
    "data_dir": Parameter(str, "", "cifar10: folder holding the python batches data_batch_1..5 and test_batch"),
}


def pretrained(network: str, dataset: str) -> classifier.Network:
    """The network from its weights file; '' is the shipped one, which only fits digits."""
    datasets.check_name(dataset)
    if dataset != "digits" and not network:
        raise ValueError(f"dataset '{dataset}' needs --network: the shipped network is for digits "
                         f"(train one with python -m pprs_mpi.train --dataset {dataset})")
    return classifier.load_network(network or classifier.default_network_path())


def images_for(net: classifier.Network, dataset: str, data_dir: str) -> datasets.Split:
    """The dataset, checked to fit the network (loaded after the cheap checks: CIFAR-10 is large)."""
    split = datasets.load(dataset, data_dir)
    if net.input_shape != split.input_shape or net.classes != split.classes:
        raise ValueError(f"the network takes {net.input_shape} images and gives {net.classes} classes, "
                         f"but {dataset} has {split.input_shape} images and {split.classes} classes")
    return split
