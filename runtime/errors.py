"""Errors a request can cause in the runtime."""


class PromptTooLongError(ValueError):
    def __init__(self, prompt_tokens: int, max_tokens: int, context: int):
        super().__init__(
            f"prompt has {prompt_tokens} tokens and asks for up to {max_tokens} more, "
            f"but the model's context window is {context} tokens"
        )
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.context = context

    def __reduce__(self):  # pickled whole, so a replica's refusal reaches the server as itself
        return type(self), (self.prompt_tokens, self.max_tokens, self.context)


def check_context(prompt_tokens: int, max_tokens: int, context: int) -> None:
    if prompt_tokens == 0:
        raise ValueError("prompt is empty: it must contain at least one token")
    if prompt_tokens >= context:
        raise PromptTooLongError(prompt_tokens, max_tokens, context)
