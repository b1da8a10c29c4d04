"""Applications built on lorebase, each a module (or package) holding an `Extension`, loaded
by APPS. `notes` is the example: read it to see where your own routes, keys, checks and
screens go."""
