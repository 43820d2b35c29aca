"""Draft controllers: decide how many draft calls to make and how many tokens to verify."""
from radar_ext.policies.adaptive import EmaPolicy, GoodputPolicy, PminPolicy
from radar_ext.policies.base import BudgetStep, CostInfo, CycleOutcome, DraftStep, History, Policy, PreDraftStep
from radar_ext.policies.costs import PolicyCosts
from radar_ext.policies.ltd import LtdPolicy
from radar_ext.policies.radar import RadarPolicy
from radar_ext.policies.static import LookupStepPolicy, StaticPolicy

__all__ = ["BudgetStep", "CostInfo", "CycleOutcome", "DraftStep", "EmaPolicy", "GoodputPolicy", "History", "LookupStepPolicy", "LtdPolicy", "Policy",
           "PminPolicy", "PreDraftStep", "PolicyCosts", "RadarPolicy", "StaticPolicy", "load_policy"]


def load_policy(path, costs=None, prefix_len=None):
    """A saved learned policy (RadarPolicy or LtdPolicy), by the `kind` in its config.json; costs /
    prefix_len as in from_pretrained (this machine's calibration instead of the stored one)."""
    from radar_ext.policies.learned import LearnedPolicy

    kind = LearnedPolicy.read_config(path).get("kind")
    classes = {"radar": RadarPolicy, "ltd": LtdPolicy}
    if kind not in classes:
        raise ValueError(f"{path}: unknown policy kind {kind!r}, expected one of {sorted(classes)}")
    return classes[kind].from_pretrained(path, costs=costs, prefix_len=prefix_len)
