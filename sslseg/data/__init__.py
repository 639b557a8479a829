"""Data: real readers and the generated demo set, HDF5 packing, splits, device loaders."""
