"""The operator: pure cores (placement, manifests, reconcile) and the kopf layer (handlers)."""
