"""Draft controllers: decide how many draft calls to make and how many tokens to verify."""
from radar_ext.policies.base import BudgetStep, CostInfo, DraftStep, Policy
from radar_ext.policies.static import StaticPolicy

__all__ = ["BudgetStep", "CostInfo", "DraftStep", "Policy", "StaticPolicy"]
