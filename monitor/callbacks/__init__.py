"""The callbacks that decide what to log; one per file, each a few lines in the user's loop.

    from monitor import Monitor, Scalars, LearningRate, GradNorms, Images, Summary
    monitor = Monitor([Summary(), Scalars(), LearningRate(), GradNorms(every=10), Images()], env="run")
"""
from monitor.callbacks.checkpoint import Checkpoint
from monitor.callbacks.grad_norms import GradNorms
from monitor.callbacks.graph import Graph
from monitor.callbacks.guard import Guard, TrainingDiverged
from monitor.callbacks.histograms import Histograms
from monitor.callbacks.images import Images
from monitor.callbacks.learning_rate import LearningRate
from monitor.callbacks.profile import Profile
from monitor.callbacks.scalars import Scalars
from monitor.callbacks.summary import Summary
from monitor.callbacks.timing import Timing

__all__ = ["Checkpoint", "GradNorms", "Graph", "Guard", "Histograms", "Images", "LearningRate", "Profile", "Scalars",
           "Summary", "Timing", "TrainingDiverged"]
