"""The samplers over the space: optuna's NSGA-II and LAT's evolutionary search."""

from __future__ import annotations


import numpy as np
import optuna

from ..core.errors import InputError
from ..core.settings import Sampler


SAMPLERS = Sampler.choices()


class EvolutionSampler(optuna.samplers.BaseSampler):
    """LAT's evolutionary search as an optuna sampler: random until `population` trials are done, then each
    trial is a child of the current Pareto front, by mutation (each gene resampled with `gene_prob`) or by
    uniform crossover of two front members."""

    def __init__(self, population: int = 12, mutation_prob: float = 0.5, gene_prob: float = 0.3, seed: int = 0):
        self.population, self.mutation_prob, self.gene_prob = population, mutation_prob, gene_prob
        self.rng = np.random.default_rng(seed)
        self.random = optuna.samplers.RandomSampler(seed=seed)

    def infer_relative_search_space(self, study, trial):
        return optuna.search_space.intersection_search_space(study.get_trials(deepcopy=False))

    def sample_relative(self, study, trial, search_space):
        done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if not search_space or len(done) < self.population:
            return {}
        front = study.best_trials
        first = front[self.rng.integers(len(front))].params
        if len(front) < 2 or self.rng.random() < self.mutation_prob:
            return {k: float(self.rng.uniform(d.low, d.high)) if self.rng.random() < self.gene_prob else first[k]
                    for k, d in search_space.items()}
        second = front[self.rng.integers(len(front))].params
        return {k: (first if self.rng.random() < 0.5 else second)[k] for k in search_space}

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self.random.sample_independent(study, trial, param_name, param_distribution)


def make_sampler(name: str, seed: int, population: int) -> optuna.samplers.BaseSampler:
    if name == Sampler.NSGA2:
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=population)
    if name == Sampler.EVOLUTION:
        return EvolutionSampler(population=population, seed=seed)
    raise InputError(f"sampler {name!r} is unknown; choose one of {SAMPLERS}")
