"""The bottom layer: errors, file IO, argument checks and option declarations. Imports
nothing else of genlab, so every other layer may use it."""
