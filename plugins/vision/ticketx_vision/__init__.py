"""ticketx-vision: lottery tickets in image classifiers (MNIST, Fashion-MNIST, CIFAR-10, image folders)."""

__version__ = "0.1.0"
