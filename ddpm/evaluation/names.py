"""The scores' names as the summary and the report read them, without the code that computes
them (which needs torch): the metrics.json keys that FD_DINOv2 adds where evaluate.metrics lists
it, and how the report names each score the verdict can rank by (report.metric)."""

DINOV2_KEYS = ("fd_dinov2", "fd_dinov2_std", "floor_fd_dinov2")
LABELS = {"fid": "FID", "fd_dinov2": "FD_DINOv2"}
