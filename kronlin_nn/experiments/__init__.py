"""The paper's experiments (Martens & Grosse 2015, §7): deep autoencoders, K-FAC vs SGD.

Run ``python -m kronlin_nn.experiments.autoencoder --help``. Modules:

- :mod:`.data`: training sets (embedded MNIST subset, MNIST IDX files, CURVES re-creation,
  scikit-learn digits).
- :mod:`.models`: the autoencoder architectures and the reconstruction-error metric.
- :mod:`.baseline`: SGD with Nesterov momentum and its learning-rate grid search.
- :mod:`.methods`: the compared optimizers, with units and batch sizes scaled to the data.
- :mod:`.training`: the timed loop with Polyak averaging and untimed evaluation.
- :mod:`.progress`: its progress report, a bar on a terminal and plain lines in a log.
- :mod:`.report`, :mod:`.plots`: the results table, the ratios and the figures.
- :mod:`.autoencoder`: the command line.
"""
