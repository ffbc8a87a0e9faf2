"""Answering-machine detection results and what the call does with them (protocols.md §E.5). Pure.

Twilio's asynchronous AMD (``AsyncAmd=true``) posts ``AnsweredBy`` on the status callback while the call
is already connected to our stream: ``human``, ``unknown``, ``fax``, ``machine_start`` (a machine answered
and its greeting is playing; ``MachineDetection=Enable``) or, with ``DetectMessageEnd``,
``machine_end_beep`` / ``machine_end_silence`` / ``machine_end_other`` (the greeting has ended: the moment
to leave a message).

:func:`machine_plan` turns a result and the agent's policy (``[answering_machine] policy`` of the profile,
else ``VOICE_TWILIO_MACHINE_POLICY``) into a :class:`MachinePlan`:

- ``hangup``: a fax (always: nobody can listen), or a machine under the ``hangup`` policy;
- ``leave_message``: a machine under ``leave_message``. The model gets a system note
  (:func:`voicemail_note`): it reached voicemail, not a person; it leaves its message after the beep, in one
  short turn, then ends the call with ``end_call``. When the greeting has ended a response is asked for at
  once (:attr:`MachinePlan.respond`); during the greeting (``machine_start``) the agent waits, and server
  VAD answers when the greeting stops, so the message is not spoken over it;
- ``talk``: a person, an unknown result, no result, or a machine under ``talk``: nothing special.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

__all__ = [
    "GREETING_ENDED",
    "MACHINE_RESULTS",
    "MachineAction",
    "MachinePlan",
    "machine_action",
    "machine_plan",
    "voicemail_note",
]

MachineAction: TypeAlias = Literal["leave_message", "hangup", "talk"]

MACHINE_RESULTS: Final = frozenset(
    {"machine_start", "machine_end_beep", "machine_end_silence", "machine_end_other", "fax"}
)
"""``AnsweredBy`` values that are not a person (§E.5)."""

GREETING_ENDED: Final = frozenset({"machine_end_beep", "machine_end_silence", "machine_end_other"})
"""``AnsweredBy`` values sent once the machine's greeting is over (``DetectMessageEnd``)."""


@dataclass(frozen=True, slots=True)
class MachinePlan:
    """What the call does with one AMD result: ``note`` goes to the model as a system message and
    ``respond`` asks for a response at once (``leave_message`` only)."""

    action: MachineAction
    note: str | None = None
    respond: bool = False


def machine_action(answered_by: str | None, policy: MachineAction) -> MachineAction:
    """The action for ``answered_by`` under ``policy`` (see the module docstring)."""
    if answered_by == "fax":
        return "hangup"
    if answered_by in MACHINE_RESULTS:
        return policy
    return "talk"


def voicemail_note(answered_by: str, message: str = "") -> str:
    """The system note that tells the model it reached voicemail (``message``: what to leave, if set)."""
    if answered_by in GREETING_ENDED:
        when = "Its greeting has ended and the beep has sounded: leave your message now"
    else:
        when = "Let its greeting finish and leave your message after the beep"
    note = (
        "Answering-machine detection: this call was answered by voicemail, not by a person. "
        f"{when}, in one short turn: who you are, why you are calling and how to reach you. "
        "Do not ask questions, nobody will answer. Then end the call with end_call."
    )
    if message.strip():
        note += f" The message to leave: {message.strip()}"
    return note


def machine_plan(
    answered_by: str | None, policy: MachineAction, *, message: str = "", auto_turns: bool = True
) -> MachinePlan:
    """The :class:`MachinePlan` for ``answered_by`` under ``policy``.

    ``auto_turns``: the session creates responses itself when the caller (here the greeting) stops (server
    VAD with ``create_response``); without it a response is asked for at once even during the greeting.
    """
    action = machine_action(answered_by, policy)
    if action != "leave_message" or answered_by is None:
        return MachinePlan(action)
    respond = answered_by in GREETING_ENDED or not auto_turns
    return MachinePlan("leave_message", voicemail_note(answered_by, message), respond)
