"""The route modules, one per section of the chain; lorebase.app puts them in order."""
