"""The worker agent: registers with its bootstrap token, heartbeats, runs jobs, streams logs.

Import the parts from their modules (``hodei_agent.agent``, ``hodei_agent.config``): this
package imports nothing itself, so ``python -m hodei_agent`` can set up its process before
the NATS client is loaded.
"""
