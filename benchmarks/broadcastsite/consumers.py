"""The Channels consumer: join the group, then group_send() whatever the client sends."""

import os

from channels.generic.websocket import AsyncWebsocketConsumer


class ListenConsumer(AsyncWebsocketConsumer):
    async def connect(self):
        await self.channel_layer.group_add("bench", self.channel_name)
        await self.accept()
        await self.send(text_data=f"ready {os.getpid()}")

    async def disconnect(self, code):
        await self.channel_layer.group_discard("bench", self.channel_name)

    async def receive(self, text_data=None, bytes_data=None):
        await self.channel_layer.group_send("bench", {"type": "bench.message", "text": text_data})

    async def bench_message(self, event):
        await self.send(text_data=event["text"])
