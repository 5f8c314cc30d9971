"""The repository's helper commands (demo.sh's summary, the Moving Fashion-MNIST dataset); run them
as `python -m scripts.<name>` from the repository root."""
