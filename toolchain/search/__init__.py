"""Multi-objective search for length configurations (LAT's second stage), on the deployment protocol.

A candidate is scored where nothing is reported and how it will be used: on held-out SQuAD *train*
questions (never dev, never calibration or quantization-tuning questions), every window at its real length
under the length rule the graph will ship with. Its cost is the encoder's multiply-adds at those real
lengths relative to the plain model run on the same unpadded windows, which is what the standard recipe
pays (at padded 384 a configuration looks far cheaper than it is on real inputs).

A candidate is a per-layer keep ratio; layer i keeps ceil(k_{i-1} * r_i) of a 384-token input, so every
candidate is a valid, non-increasing configuration. By default the ratios span what LengthDrop trained
(each layer keeps 1 - length_drop_ratio .. 100 % of the previous one, read from the model's training record).

Two samplers over the same space: optuna's NSGA-II, and LAT's evolutionary search (children of the
current Pareto front by mutation or crossover). Trials live in an optuna study, in memory or in shared
storage (a journal file, SQLite, or an RDB URL), so a search resumes and many processes or machines can
join it.
"""
