"""Robustness analyses that are not training loops: the robustness coefficient of a rule
(``byzance.analysis.kappa``), the crash tolerance of a trained network
(``byzance.analysis.crash``), and signSGD majority vote under attack
(``byzance.analysis.sign_vote``). Import the submodule you need; nothing is imported here.
"""
