"""STgram-MFN in PyTorch, transcribed from liuyoude/STgram-MFN's net.py.

The peer of benchmarks/classifier_speed.py and the oracle of
tests/test_stgram_mfn.py's parity test (commit d6c8865, and the paper's
bottleneck table it replaced). Imports torch only through its caller.
"""

import math

# The paper's MobileFaceNet table, (t, c, n, s), commented out in net.py
# since d6c8865.
PAPER_TABLE = (
  (2, 64, 5, 2),
  (4, 128, 1, 2),
  (2, 128, 6, 1),
  (4, 128, 1, 2),
  (2, 128, 2, 1),
)


def stgram_mfn(
  torch,
  num_classes,
  *,
  n_mels,
  frames,
  win_length,
  hop_length,
  pooled,
  table=PAPER_TABLE,
):
  """net.py's STgramMFN(use_arcface=True), m=0.7, s=30, in PyTorch.

  Its 10-s literals are arguments: frames for LayerNorm(313) and pooled for
  the depthwise (8, 20); table is MobileFaceNet's bottleneck table (the
  paper's by default).
  """
  nn = torch.nn

  class ConvBlock(nn.Module):
    def __init__(self, inp, oup, k, s=1, p=0, dw=False, linear=False):
      super().__init__()
      groups = inp if dw else 1
      self.conv = nn.Conv2d(inp, oup, k, s, p, groups=groups, bias=False)
      self.norm = nn.BatchNorm2d(oup)
      self.prelu = None if linear else nn.PReLU(oup)

    def forward(self, x):
      x = self.norm(self.conv(x))
      return x if self.prelu is None else self.prelu(x)

  class Bottleneck(nn.Module):
    def __init__(self, inp, oup, stride, t):
      super().__init__()
      self.connect = stride == 1 and inp == oup
      self.expand = ConvBlock(inp, inp * t, 1)
      self.depthwise = ConvBlock(inp * t, inp * t, 3, stride, 1, dw=True)
      self.project = ConvBlock(inp * t, oup, 1, linear=True)

    def forward(self, x):
      y = self.project(self.depthwise(self.expand(x)))
      return x + y if self.connect else y

  class MobileFaceNet(nn.Module):
    def __init__(self):
      super().__init__()
      self.conv1 = ConvBlock(2, 64, 3, 2, 1)
      self.dw_conv1 = ConvBlock(64, 64, 3, 1, 1, dw=True)
      blocks, inp = [], 64
      for t, c, n, s in table:
        for i in range(n):
          blocks.append(Bottleneck(inp, c, s if i == 0 else 1, t))
          inp = c
      self.blocks = nn.Sequential(*blocks)
      self.conv2 = ConvBlock(inp, 512, 1)
      self.linear7 = ConvBlock(512, 512, pooled, dw=True, linear=True)
      self.linear1 = ConvBlock(512, 128, 1, linear=True)
      self.fc_out = nn.Linear(128, num_classes)

    def forward(self, x):
      x = self.blocks(self.dw_conv1(self.conv1(x)))
      x = self.linear1(self.linear7(self.conv2(x)))
      feature = x.view(x.size(0), -1)
      return self.fc_out(feature), feature

  class TgramBlock(nn.Module):
    def __init__(self):
      super().__init__()
      self.norm = nn.LayerNorm(frames)
      self.conv = nn.Conv1d(n_mels, n_mels, 3, 1, 1, bias=False)

    def forward(self, x):
      return self.conv(nn.functional.leaky_relu(self.norm(x), 0.2))

  class TgramNet(nn.Module):
    def __init__(self):
      super().__init__()
      self.extractor = nn.Conv1d(
        1, n_mels, win_length, hop_length, win_length // 2, bias=False
      )
      self.blocks = nn.Sequential(*[TgramBlock() for _ in range(3)])

    def forward(self, x):
      return self.blocks(self.extractor(x))

  class ArcMarginProduct(nn.Module):
    def __init__(self, m=0.7, s=30.0):
      super().__init__()
      self.weight = nn.Parameter(torch.empty(num_classes, 128))
      nn.init.xavier_uniform_(self.weight)
      self.m, self.s = m, s
      self.th, self.mm = math.cos(math.pi - m), math.sin(math.pi - m) * m

    def forward(self, x, label):
      normalize = nn.functional.normalize
      cosine = nn.functional.linear(normalize(x), normalize(self.weight))
      sine = torch.sqrt(1.0 - torch.pow(cosine, 2))
      phi = cosine * math.cos(self.m) - sine * math.sin(self.m)
      phi = torch.where((cosine - self.th) > 0, phi, cosine - self.mm)
      one_hot = torch.zeros_like(cosine)
      one_hot.scatter_(1, label.view(-1, 1).long(), 1)
      return self.s * (one_hot * phi + (1.0 - one_hot) * cosine)

  class STgramMFN(nn.Module):
    def __init__(self):
      super().__init__()
      self.arcface = ArcMarginProduct()
      self.tgram = TgramNet()
      self.mobilefacenet = MobileFaceNet()

    def forward(self, x_wav, x_mel, label):
      x_t = self.tgram(x_wav.unsqueeze(1)).unsqueeze(1)
      x = torch.cat((x_mel.unsqueeze(1), x_t), dim=1)
      _, feature = self.mobilefacenet(x)
      return self.arcface(feature, label), feature

  return STgramMFN()
