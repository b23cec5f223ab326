"""Chat templates: how a hidden system prompt and the visible turns of a conversation are
laid out as the one text a language model continues.

The three parts stay separate: the `ChatTemplate` (stored with the run, in config.json),
the system prompt (`Chat.system`, never shown in the transcript) and the visible
transcript (`Chat.messages`). `Chat.prompt()` renders them, exactly as the template says,
into the text the model reads; the model's reply is what it writes after the template's
assistant prefix, up to the template's stop string.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..errors import GenlabError


@dataclass(frozen=True)
class ChatTemplate:
    system: str = "{system}\n\n"        # rendered only when there is a system prompt
    user: str = "USER:\n{user}\n\n"
    assistant: str = "ASSISTANT:\n{assistant}\n\n"
    stop: str = "\n\n"                  # a reply ends where the model writes this

    def __post_init__(self):
        for part, slot in (("system", "{system}"), ("user", "{user}"), ("assistant", "{assistant}")):
            if getattr(self, part).count(slot) != 1:
                raise GenlabError(f"chat template: the {part} part must contain {slot} exactly once")
        if not self.stop:
            raise GenlabError("chat template: the stop string must not be empty")

    @property
    def reply_prefix(self) -> str:
        """What comes before the model's reply: the assistant part up to its slot."""
        return self.assistant.split("{assistant}")[0]

    def literals(self) -> str:
        """Every character the template itself adds (a char-level vocabulary must hold them)."""
        text = self.system + self.user + self.assistant + self.stop
        for slot in ("{system}", "{user}", "{assistant}"):
            text = text.replace(slot, "")
        return text

    def render(self, system: str | None, messages: list) -> str:
        """The full text the model reads: the system part (when a system prompt is given),
        every turn, then the assistant prefix the model continues after."""
        out = [self.system.replace("{system}", system)] if system else []
        for m in messages:
            role, content = m["role"], m["content"]
            if role == "user":
                out.append(self.user.replace("{user}", content))
            elif role == "assistant":
                out.append(self.assistant.replace("{assistant}", content))
            else:
                raise GenlabError(f"unknown chat role '{role}' (user or assistant)")
        out.append(self.reply_prefix)
        return "".join(out)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ChatTemplate":
        try:
            return cls(**d)
        except TypeError as e:
            raise GenlabError(f"invalid chat template ({e})") from None


# When a char-level vocabulary lacks the default template's letters, only newlines are used.
PLAIN_TEMPLATE = ChatTemplate(system="{system}\n\n", user="{user}\n\n", assistant="{assistant}\n\n")


@dataclass
class Chat:
    """One conversation: a template, a hidden system prompt and the visible transcript."""
    template: ChatTemplate
    system: str | None = None
    messages: list = field(default_factory=list)   # [{"role": "user"|"assistant", "content": str}]

    def add(self, role: str, content: str) -> None:
        self.messages.append({"role": role, "content": content})

    def prompt(self) -> str:
        """What the model reads for its next reply (system prompt included)."""
        return self.template.render(self.system, self.messages)

    def transcript(self) -> str:
        """What the user sees: the turns, without the system prompt or template text."""
        return "\n".join(f"{m['role']}: {m['content']}" for m in self.messages)
