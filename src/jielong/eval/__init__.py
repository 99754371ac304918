"""Evaluation: multiple-choice scoring by likelihood, replies checked for their answer and
scored with chrF, classification metrics, and reward-model scores of replies."""
