"""Preset YAML recipes, one per paper setting plus embedded CPU presets (``lipcert presets``)."""
