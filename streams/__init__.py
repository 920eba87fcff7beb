"""From an event to a diff.

Event schema and validation, event sources and producers (in-memory now, Kafka later), the Redis
profile model, the catalog mirror, the recommender and the per-event processor. Imports
``sessions`` (to store and publish feed versions), never ``push``.
"""
