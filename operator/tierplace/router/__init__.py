"""The cascade router: one endpoint that answers on the lowest confident tier."""
