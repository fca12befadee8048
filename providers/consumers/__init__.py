"""Consumers behind :class:`rotator.abc.Consumer`: what is rolled once the new key is
everywhere (a command, a webhook, a Kubernetes workload, an ECS service). Each module imports
its SDK itself, when its factory is called."""
