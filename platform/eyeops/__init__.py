"""eyeops: a Kubernetes-native MLOps platform for ophthalmology models.

Every stage is a typed library function — ``prepare``, ``train``, ``evaluate``, ``register``,
``deploy`` — and the CLI, KFP components and servers are thin shells around them.
"""

__version__ = "0.1.0"
