"""Services: the queue runner, the retry schedule and the composed MTA."""

from mailframe.services.mta import MailService
from mailframe.services.queuerunner import QueueRunner
from mailframe.services.schedule import DEFAULT_SCHEDULE, RetrySchedule

__all__ = ["DEFAULT_SCHEDULE", "MailService", "QueueRunner", "RetrySchedule"]
