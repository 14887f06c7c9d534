"""The artifact folder: graph interface, manifest, atomic staging and the output rule; imports core, data and model."""
