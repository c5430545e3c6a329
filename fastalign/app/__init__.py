"""What the CLI runs, above the library: recipes (load a model and data, build a trainer, train,
evaluate, print the summary) and the demo. The library never imports this package; imports
here stay lazy so that ``fastalign --help`` loads no torch."""
