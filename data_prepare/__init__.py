"""Data preparation: coil sensitivity maps (ESPIRiT via sigpy or BART), the slice index, the synthetic phantom set
and multi-coil simulation from magnitude images. Every script runs as `python data_prepare/<script>.py --help`."""
