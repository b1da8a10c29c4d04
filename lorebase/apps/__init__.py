"""Applications built on lorebase, each one module of routes inserted into the chain.
`notes` is the example: read it to see where your own routes go."""
