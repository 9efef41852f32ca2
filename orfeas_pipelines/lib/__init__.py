"""The pure library: generation, meshes, export, signing and manifests. No Dagster imports."""
