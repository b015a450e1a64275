"""The expert-prefetching study's Strategy C (`MultiLookStrategy`) and D (`TopKStrategy`) as its code states
them (../shared/papers/expert_prefetching_strategies.md), copied with the least change that makes them
deterministic: a set's order (`list(set)[:32]`) is read as ascending ids, and `np.argsort`'s order among equal
counts as the lower id first. The tests run one copy per layer over the sets each pass used there and compare
its predictions with the policy kernels' (`frequency` / `multi-look` with `study` 1).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _argsort_low_id(counts: np.ndarray) -> np.ndarray:
    """np.argsort(counts) with equal counts ordered so that [-k:] and [::-1] prefer the lower id."""
    return np.lexsort((-np.arange(counts.shape[0]), counts))


class TopKStrategy:
    def __init__(self, num_experts: int, k: int = 32) -> None:
        self.k = k
        self.expert_counts = np.zeros(num_experts, dtype=np.float64)
        self.total_accesses = 0
        self.current_top_k: set[int] = set()
        self.update_frequency = 100
        self.token_count = 0
        self.decay_factor = 0.999
        self.min_count_threshold = 1.0

    def predict_experts(self, routing_history: list[list[int]], current_token: int) -> list[int]:
        self._update_frequencies(routing_history)
        self.token_count += 1
        if self.token_count % self.update_frequency == 0:
            self._recompute_top_k()
        return list(self.current_top_k)

    def _update_frequencies(self, routing_history: list[list[int]]) -> None:
        self.expert_counts *= self.decay_factor
        recent_window = min(10, len(routing_history))
        for token_experts in routing_history[-recent_window:]:
            for expert_id in token_experts:
                self.expert_counts[expert_id] += 1.0
                self.total_accesses += 1

    def _recompute_top_k(self) -> None:
        top_k_indices = _argsort_low_id(self.expert_counts)[-self.k:]
        valid_experts = []
        for expert_id in top_k_indices:
            if self.expert_counts[expert_id] >= self.min_count_threshold:
                valid_experts.append(int(expert_id))
        self.current_top_k = set(valid_experts)
        if len(self.current_top_k) < self.k:
            all_sorted = _argsort_low_id(self.expert_counts)[::-1]
            for expert_id in all_sorted:
                if len(self.current_top_k) >= self.k:
                    break
                self.current_top_k.add(int(expert_id))


class MultiLookStrategy:
    def __init__(self) -> None:
        self.sequence_patterns: dict[Any, Any] = {}
        self.expert_cooccurrence: dict[int, dict[int, int]] = {}
        self.temporal_patterns: dict[int, dict[int, int]] = {}
        self.transition_chains: dict[Any, Any] = {}
        self.pattern_length = 3
        self.lookahead_steps = 4
        self.min_pattern_frequency = 3

    def predict_experts(self, routing_history: list[list[int]], current_token: int) -> list[int]:
        if len(routing_history) < self.pattern_length:
            return []
        self._update_patterns(routing_history)
        predicted_experts: set[int] = set()
        predicted_experts.update(self._predict_from_sequences(routing_history))
        predicted_experts.update(self._predict_from_cooccurrence(routing_history))
        predicted_experts.update(self._predict_from_temporal(current_token))
        predicted_experts.update(self._predict_from_chains(routing_history))
        return sorted(predicted_experts)[:32]

    def _predict_from_sequences(self, routing_history: list[list[int]]) -> set[int]:
        predictions: set[int] = set()
        recent_sequence = tuple(tuple(sorted(experts)) for experts in routing_history[-self.pattern_length:])
        if recent_sequence in self.sequence_patterns:
            pattern_data = self.sequence_patterns[recent_sequence]
            if pattern_data["frequency"] >= self.min_pattern_frequency:
                predictions.update(expert for expert, freq in pattern_data["next_experts"].items()
                                   if freq >= self.min_pattern_frequency * 0.3)
        return predictions

    def _predict_from_cooccurrence(self, routing_history: list[list[int]]) -> set[int]:
        predictions: set[int] = set()
        if len(routing_history) < 1:
            return predictions
        for expert_id in routing_history[-1]:
            if expert_id in self.expert_cooccurrence:
                for coexpert, frequency in self.expert_cooccurrence[expert_id].items():
                    if frequency >= self.min_pattern_frequency:
                        predictions.add(coexpert)
        return predictions

    def _predict_from_temporal(self, current_token: int) -> set[int]:
        predictions: set[int] = set()
        sequence_position = current_token % 64
        if sequence_position in self.temporal_patterns:
            predictions.update(expert for expert, freq in self.temporal_patterns[sequence_position].items()
                               if freq >= self.min_pattern_frequency)
        return predictions

    def _predict_from_chains(self, routing_history: list[list[int]]) -> set[int]:
        predictions: set[int] = set()
        if len(routing_history) < 2:
            return predictions
        for chain_length in range(2, min(4, len(routing_history))):
            chain = tuple(tuple(sorted(experts)) for experts in routing_history[-chain_length:])
            if chain in self.transition_chains:
                chain_data = self.transition_chains[chain]
                if chain_data["frequency"] >= self.min_pattern_frequency:
                    predictions.update(chain_data["next_experts"])
        return predictions

    def _update_patterns(self, routing_history: list[list[int]]) -> None:
        if len(routing_history) >= self.pattern_length + 1:
            for i in range(len(routing_history) - self.pattern_length):
                pattern = tuple(tuple(sorted(experts)) for experts in routing_history[i:i + self.pattern_length])
                next_experts = routing_history[i + self.pattern_length]
                if pattern not in self.sequence_patterns:
                    self.sequence_patterns[pattern] = {"frequency": 0, "next_experts": {}}
                self.sequence_patterns[pattern]["frequency"] += 1
                for expert in next_experts:
                    if expert not in self.sequence_patterns[pattern]["next_experts"]:
                        self.sequence_patterns[pattern]["next_experts"][expert] = 0
                    self.sequence_patterns[pattern]["next_experts"][expert] += 1
        if len(routing_history) >= 2:
            current_experts = routing_history[-2]
            next_experts = routing_history[-1]
            for curr_expert in current_experts:
                if curr_expert not in self.expert_cooccurrence:
                    self.expert_cooccurrence[curr_expert] = {}
                for next_expert in next_experts:
                    if next_expert not in self.expert_cooccurrence[curr_expert]:
                        self.expert_cooccurrence[curr_expert][next_expert] = 0
                    self.expert_cooccurrence[curr_expert][next_expert] += 1
        for token_idx, experts in enumerate(routing_history[-10:]):
            position = (len(routing_history) - 10 + token_idx) % 64
            if position not in self.temporal_patterns:
                self.temporal_patterns[position] = {}
            for expert in experts:
                if expert not in self.temporal_patterns[position]:
                    self.temporal_patterns[position][expert] = 0
                self.temporal_patterns[position][expert] += 1


def per_layer_predictions(strategy: type, passes: list[list[list[list[int]]]], n_layers: int,
                          **kwargs: Any) -> dict[tuple[int, int], list[int]]:
    """{(layer, pass): the study's prediction for that layer and pass}, one strategy per layer, a step per pass,
    the step's entry the sorted set of experts its tokens used at the layer."""
    out = {}
    for layer in range(n_layers):
        strat = strategy(**kwargs)
        history: list[list[int]] = []
        for s, p in enumerate(passes):
            out[(layer, s)] = strat.predict_experts(list(history), s)
            history.append(sorted({e for tok in p for e in tok[layer]}))
    return out
