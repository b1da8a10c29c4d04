"""The lorebase repository's own settings, as a project made with `lorebase new` has them:
UPPER_CASE names for every environment, DEV = {...} / PROD = {...} for one (lorebase/config.py
lists every key and its default). Secrets go in secret.py, which git ignores."""

# the example application (lorebase/apps/notes/), loaded by this repository's dev server,
# its tests and its benchmark; a project of your own names its own package here
APPS = ["lorebase.apps.notes"]
