#!/usr/bin/env python3
"""Render conversations with Hugging Face transformers' `apply_chat_template` for chat templates in the
official formats of several model families; tests/mllm_chat.rs renders the same with our minijinja
environment (src/mllm/chat.rs) and compares the strings exactly.

Run once from the repository root (output committed as tests/fixtures/mllm/chat_templates.json):
    .venv/bin/python scripts/make_chat_template_goldens.py
Needs transformers and tokenizers (scripts/requirements-dev.txt).

The templates are written here in each family's published prompt format (Llama 2 chat, Llama 3
instruct, Mistral instruct, Vicuna v1.1, Qwen2 / ChatML, LLaVA-1.5 as Hugging Face's llava-hf
processors render it, with content parts and a `{% generation %}` block); they are multi-line where
the originals are, so Jinja2's trim_blocks / lstrip_blocks matter as they do for the real files.
"""
import json
import os
import time

from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "mllm", "chat_templates.json")

LLAMA2 = """{%- if messages[0]['role'] == 'system' %}
    {%- set loop_messages = messages[1:] %}
    {%- set system_message = messages[0]['content'] %}
{%- else %}
    {%- set loop_messages = messages %}
    {%- set system_message = false %}
{%- endif %}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if loop.index0 == 0 and system_message %}
        {%- set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}
    {%- else %}
        {%- set content = message['content'] %}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {{- bos_token + '[INST] ' + content.strip() + ' [/INST]' }}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + content.strip() + ' ' + eos_token }}
    {%- endif %}
{%- endfor %}
"""

LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

# Llama 3.1's layout: a system header with dates, loop controls, a namespace.
LLAMA31 = """{{- bos_token }}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- set ns = namespace(turns=0) %}
{%- for message in messages %}
    {%- if message['role'] == 'ipython' %}
        {%- continue %}
    {%- endif %}
    {%- set ns.turns = ns.turns + 1 %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

MISTRAL = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)

VICUNA = """{% if messages[0]['role'] == 'system' %}
{% set system = messages[0]['content'] %}
{% set messages = messages[1:] %}
{% else %}
{% set system = "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions." %}
{% endif %}
{{ system }}
{%- for message in messages %}
    {%- if message['role'] == 'user' %} USER: {{ message['content'] }}
    {%- else %} ASSISTANT: {{ message['content'] }}{{ eos_token }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %} ASSISTANT:{% endif %}
"""

QWEN2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

LLAVA = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\\n' }}{% endfor %}"
    "{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}{% endfor %}"
    "{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

# Tool descriptions the way Qwen2.5 / Llama 3.1 write them: Python's json.dumps through `tojson`.
TOJSON = (
    "{%- for message in messages %}{{ message | tojson }}\n{{ message | tojson(indent=2) }}\n{% endfor %}"
    "{{- {'n': messages | length, 'roles': messages | map(attribute='role') | list, 'x': none, 'ok': true} | tojson }}"
)

TEMPLATES = {
    "llama2": (LLAMA2, "<s>", "</s>"),
    "llama3": (LLAMA3, "<|begin_of_text|>", "<|eot_id|>"),
    "llama31": (LLAMA31, "<|begin_of_text|>", "<|eot_id|>"),
    "mistral": (MISTRAL, "<s>", "</s>"),
    "vicuna": (VICUNA, "<s>", "</s>"),
    "qwen2": (QWEN2, None, "<|im_end|>"),
    "llava": (LLAVA, "<s>", "</s>"),
    "tojson": (TOJSON, None, "</s>"),
}

TEXT_CONVERSATIONS = [
    ([{"role": "user", "content": "What is 2 + 2?"}], True),
    ([{"role": "system", "content": "You are terse. "},
      {"role": "user", "content": "  Hi there \n"},
      {"role": "assistant", "content": "Hello! "},
      {"role": "user", "content": "Name a colour; say \"why\" — briefly."}], True),
    ([{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}], False),
]

PARTS_CONVERSATIONS = [
    ([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}]}], True),
    ([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}]},
      {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
      {"role": "user", "content": [{"type": "text", "text": "Which colour?"}]}], True),
]

USER_TURN = "{image}\nQuestion: {question}\nOptions: {options}"


def tokenizer(template, bos, eos):
    vocab = {"[UNK]": 0, "</s>": 1, "<s>": 2, "<|begin_of_text|>": 3, "<|eot_id|>": 4, "<|im_end|>": 5}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="[UNK]")),
                                  bos_token=bos, eos_token=eos, unk_token="[UNK]")
    tok.chat_template = template
    return tok


def render(tok, conv, gen):
    try:
        return {"text": tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen)}
    except Exception as e:  # transformers raises TemplateError from raise_exception
        return {"error": str(e)}


def main():
    cases = []
    for name, (template, bos, eos) in TEMPLATES.items():
        tok = tokenizer(template, bos, eos)
        convs = PARTS_CONVERSATIONS if name == "llava" else TEXT_CONVERSATIONS
        renders = [{"messages": c, "add_generation_prompt": g, **render(tok, c, g)} for c, g in convs]
        # The pipeline's prompt in the model's format: one user turn holding the placeholders.
        if name == "llava":
            parts = [{"type": "image"}, {"type": "text", "text": USER_TURN.replace("{image}\n", "", 1)}]
            text = tok.apply_chat_template([{"role": "user", "content": parts}], tokenize=False, add_generation_prompt=True)
            prompt = text.replace("<image>", "{image}", 1)
        elif name == "tojson":
            prompt = None
        else:
            prompt = tok.apply_chat_template([{"role": "user", "content": USER_TURN}], tokenize=False, add_generation_prompt=True)
        cases.append({"name": name, "template": template, "bos_token": bos or "", "eos_token": eos or "",
                      "renders": renders, "prompt_template": prompt})

    # strftime_now's formatting, against Python's time.strftime on fixed instants (UTC).
    instants = [0, 951782400, 1700000000, 1722000000, 4102444799]
    formats = ["%d %b %Y", "%Y-%m-%d %H:%M:%S", "%A %B %j %y %a %%"]
    strftime = [{"secs": t, "format": f, "text": time.strftime(f, time.gmtime(t))} for t in instants for f in formats]

    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump({"user_turn": USER_TURN, "cases": cases, "strftime": strftime}, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print("wrote", os.path.normpath(OUT))


if __name__ == "__main__":
    main()
